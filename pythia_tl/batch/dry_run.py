"""What a batch would cost, from the Hub's listings and the files' headers only: for every
revision its commit, the bytes it would fetch and write, and whether it is missing, a duplicate
of another revision (same weight sha256), or already done."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pythia_tl.batch.dedupe import WeightsKey, weights_key
from pythia_tl.batch.request import BatchRequest, WorkList
from pythia_tl.batch.resume import ExistingOutput, Requirements, judge_existing
from pythia_tl.batch.work import WorkItem
from pythia_tl.engine.output_plan import plan_output
from pythia_tl.engine.reading import computes_sha256
from pythia_tl.errors import PythiaTLError
from pythia_tl.formats.safetensors import TensorEntry
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import RevisionListing, describe_revision
from pythia_tl.hub.quotas import RESOLVES_PER_SMALL_FILE, WINDOW_SECONDS, exceeded
from pythia_tl.hub.revision import download_revision
from pythia_tl.hub.stream_reader import ranges_to_fetch
from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.output.metadata import build_metadata
from pythia_tl.output.writer import output_size
from pythia_tl.source import open_hub_revision
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES


@dataclass(frozen=True)
class RevisionCost:
    item: WorkItem
    commit: str | None
    fetch_bytes: int
    write_bytes: int
    # converted, skipped, duplicate (as the summary says), missing, refused (a file pythia-tl
    # did not write)
    status: str
    duplicate_of: str | None = None
    reason: str | None = None
    # Requests the run makes for it: /resolve (rate-limited per window) and API calls.
    resolve_requests: int = 0
    api_requests: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.item.repo_id,
            "model_name": self.item.model.name,
            "revision": self.item.revision,
            "step": self.item.step,
            "commit": self.commit,
            "fetch_bytes": self.fetch_bytes,
            "write_bytes": self.write_bytes,
            "status": self.status,
            "duplicate_of": self.duplicate_of,
            "missing": self.status == "missing",
            "reason": self.reason,
            "resolve_requests": self.resolve_requests,
            "api_requests": self.api_requests,
        }


@dataclass(frozen=True)
class BatchCost:
    revisions: tuple[RevisionCost, ...]
    # API calls made once for the whole run (each repository's branch list).
    run_api_requests: int = 0

    @property
    def resolve_requests(self) -> int:
        return sum(r.resolve_requests for r in self.revisions)

    @property
    def api_requests(self) -> int:
        return self.run_api_requests + sum(r.api_requests for r in self.revisions)

    @property
    def exceeds(self) -> list[str]:
        """The kinds of Hub user whose one rate-limit window the run does not fit in."""
        return exceeded(self.resolve_requests, self.api_requests)

    @property
    def fetch_bytes(self) -> int:
        return sum(r.fetch_bytes for r in self.revisions)

    @property
    def write_bytes(self) -> int:
        return sum(r.write_bytes for r in self.revisions)

    def to_json(self) -> dict[str, Any]:
        return {
            "fetch_bytes": self.fetch_bytes,
            "write_bytes": self.write_bytes,
            "resolve_requests": self.resolve_requests,
            "api_requests": self.api_requests,
            "rate_limit_window_seconds": WINDOW_SECONDS,
            "exceeds_window_of": self.exceeds,
            "revisions": [r.to_json() for r in self.revisions],
        }


def estimate(request: BatchRequest, work: WorkList) -> BatchCost:
    """The cost of ``work``, revision by revision (nothing is converted or downloaded but the
    small config and index files), each judged as the run judges it (``runner``): outputs up to
    date are skipped first, and their weights are what later duplicates link to."""
    seen: dict[WeightsKey, str] = {}
    costs: dict[WorkItem, RevisionCost] = {}
    existing: dict[WorkItem, ExistingOutput] = {}
    for item in work.items:
        found = judge_existing(
            request.output_dir / item.relative_output,
            Requirements.of(item.repo_id, request.options),
            work.branch_commit(item, request.cache_dir),
        )
        if found.state == "foreign":
            costs[item] = RevisionCost(item, None, 0, 0, "refused", reason=found.reason)
        elif found.state in ("current", "unverified"):
            costs[item] = _skipped(item, found, found.commit, "up to date", seen)
        else:
            existing[item] = found
    # Small files' blobs (and tokenizer sets) the run will have cached, as it goes.
    blobs: set[object] = set()
    # The latest checkpoint of a group of duplicates converts, as in the run (batch.dedupe).
    for item, found in sorted(existing.items(), key=lambda pair: pair[0], reverse=True):
        costs[item] = _cost(request, work, item, found, seen, blobs)
    repos = {item.repo_id for item in work.items if work.branches.get(item.repo_id) is not None}
    return BatchCost(tuple(costs[item] for item in work.items), len(repos))


def _cost(
    request: BatchRequest,
    work: WorkList,
    item: WorkItem,
    existing: ExistingOutput,
    seen: dict[WeightsKey, str],
    blobs: set[object],
) -> RevisionCost:
    if work.branches.get(item.repo_id) is None:
        why = work.unreachable.get(item.repo_id, "the Hub could not be asked")
        return RevisionCost(item, None, 0, 0, "missing", reason=why)
    try:
        listing = describe_revision(item.repo_id, item.revision)
    except HubUnreachable as exc:
        return RevisionCost(item, None, 0, 0, "missing", reason=exc.why)
    except PythiaTLError as exc:
        return RevisionCost(item, None, 0, 0, "missing", reason=str(exc), api_requests=1)
    if existing.has_the_weights_of(listing):
        reason = f"up to date (same weights as commit {existing.commit})"
        return replace(_skipped(item, existing, listing.commit, reason, seen), api_requests=1)
    key = weights_key(item.repo_id, listing.weight_sha256)
    if key is not None and key in seen:
        return RevisionCost(item, listing.commit, 0, 0, "duplicate", seen[key], api_requests=1)
    if key is not None:
        seen[key] = item.revision
    try:
        cost = _conversion_cost(request, item, listing)
    except PythiaTLError as exc:
        return RevisionCost(item, listing.commit, 0, 0, "missing", reason=str(exc), api_requests=1)
    small = ["config.json"]
    if listing.weights_entry.endswith(".index.json"):
        small.append(listing.weights_entry)
    tokenizer = tuple(
        (name, listing.blob_ids.get(name)) for name in TOKENIZER_FILES if name in listing.files
    )
    if (item.repo_id, tokenizer) not in blobs:  # the run reuses tokenizer files it has cached
        blobs.add((item.repo_id, tokenizer))
        small += [name for name, _ in tokenizer]
    resolves = cost.resolve_requests + _small_file_resolves(listing, small, blobs)
    return replace(cost, resolve_requests=resolves, api_requests=1)


def _small_file_resolves(listing: RevisionListing, names: list[str], blobs: set[object]) -> int:
    """huggingface_hub's requests for small files: a HEAD each, and a GET unless the cache has
    the same bytes already (the same blob, downloaded earlier in the run)."""
    count = 0
    for name in names:
        blob = (listing.repo_id, listing.blob_ids.get(name))
        count += 1 if blob[1] is not None and blob in blobs else RESOLVES_PER_SMALL_FILE
        blobs.add(blob)
    return count


def _skipped(
    item: WorkItem,
    existing: ExistingOutput,
    commit: str | None,
    reason: str,
    seen: dict[WeightsKey, str],
) -> RevisionCost:
    key = weights_key(item.repo_id, existing.source_sha256)
    if key is not None:
        seen.setdefault(key, item.revision)
    return RevisionCost(item, commit, 0, 0, "skipped", reason=reason)


def _conversion_cost(
    request: BatchRequest, item: WorkItem, listing: RevisionListing
) -> RevisionCost:
    fetched = download_revision(listing, request.cache_dir, weights=False, tokenizer=False)
    source = open_hub_revision(item.model, fetched)
    options = request.options
    full = plan_conversion(source.checkpoint, options.dtype)
    out = plan_output(full, options.processing, options.selection)
    names = [s.name for s in out.conversion.sources if s.name is not None]
    resolves = 0
    if source.checkpoint.is_remote:
        ranges = ranges_to_fetch(source.checkpoint, names, whole_files=not out.is_partial)
        fetch = sum(r.end - r.start for r in ranges)
        # One resolve per weight file read (its location is then reused for every range).
        resolves += len({r.file.name for r in ranges})
    else:
        fetch = 0  # in the cache already
    entries = [TensorEntry(t.key, t.dtype, t.shape) for t in out.tensors]
    metadata = build_metadata(
        full.config,
        full.dtype,
        source.provenance,
        {file.name: "0" * 64 for file in source.checkpoint.files},
        options.processing,
        options.selection,
        sha256_computed=computes_sha256(source.checkpoint, whole=not out.is_partial),
    )
    size = output_size(entries, metadata)
    return RevisionCost(item, listing.commit, fetch, size, "converted", resolve_requests=resolves)
