"""What a batch would cost, from the Hub's listings and the files' headers only: for every
revision its commit, the bytes it would fetch and write, and whether it is missing, a duplicate
of another revision (same weight sha256), or already done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pythia_tl.batch.dedupe import WeightsKey, weights_key
from pythia_tl.batch.request import BatchRequest, WorkList
from pythia_tl.batch.resume import ExistingOutput, Requirements, judge_existing
from pythia_tl.batch.work import WorkItem
from pythia_tl.engine.output_plan import plan_output
from pythia_tl.errors import PythiaTLError
from pythia_tl.formats.safetensors import TensorEntry
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import RevisionListing, describe_revision
from pythia_tl.hub.revision import download_revision
from pythia_tl.hub.stream_reader import ranges_to_fetch
from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.output.metadata import build_metadata
from pythia_tl.output.writer import output_size
from pythia_tl.source import open_hub_revision


@dataclass(frozen=True)
class RevisionCost:
    item: WorkItem
    commit: str | None
    fetch_bytes: int
    write_bytes: int
    status: str  # convert, skip, duplicate, missing, refused (a file pythia-tl did not write)
    duplicate_of: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.item.model.name,
            "repo_id": self.item.repo_id,
            "revision": self.item.revision,
            "commit": self.commit,
            "fetch_bytes": self.fetch_bytes,
            "write_bytes": self.write_bytes,
            "status": self.status,
            "duplicate_of": self.duplicate_of,
            "missing": self.status == "missing",
            "reason": self.reason,
        }


@dataclass(frozen=True)
class BatchCost:
    revisions: tuple[RevisionCost, ...]

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
    # The latest step of a group of duplicates converts, as in the run (batch.dedupe).
    for item, found in sorted(existing.items(), key=lambda pair: pair[0], reverse=True):
        costs[item] = _cost(request, work, item, found, seen)
    return BatchCost(tuple(costs[item] for item in work.items))


def _cost(
    request: BatchRequest,
    work: WorkList,
    item: WorkItem,
    existing: ExistingOutput,
    seen: dict[WeightsKey, str],
) -> RevisionCost:
    if work.branches.get(item.repo_id) is None:
        why = work.unreachable.get(item.repo_id, "the Hub could not be asked")
        return RevisionCost(item, None, 0, 0, "missing", reason=why)
    try:
        listing = describe_revision(item.repo_id, item.revision)
    except HubUnreachable as exc:
        return RevisionCost(item, None, 0, 0, "missing", reason=exc.why)
    except PythiaTLError as exc:
        return RevisionCost(item, None, 0, 0, "missing", reason=str(exc))
    if existing.has_the_weights_of(listing):
        reason = f"up to date (same weights as commit {existing.commit})"
        return _skipped(item, existing, listing.commit, reason, seen)
    key = weights_key(item.repo_id, listing.weight_sha256)
    if key is not None and key in seen:
        return RevisionCost(item, listing.commit, 0, 0, "duplicate", seen[key])
    if key is not None:
        seen[key] = item.revision
    try:
        return _conversion_cost(request, item, listing)
    except PythiaTLError as exc:
        return RevisionCost(item, listing.commit, 0, 0, "missing", reason=str(exc))


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
    return RevisionCost(item, commit, 0, 0, "skip", reason=reason)


def _conversion_cost(
    request: BatchRequest, item: WorkItem, listing: RevisionListing
) -> RevisionCost:
    fetched = download_revision(listing, request.cache_dir, weights=False, tokenizer=False)
    source = open_hub_revision(item.model, fetched)
    options = request.options
    full = plan_conversion(source.checkpoint, options.dtype)
    out = plan_output(full, options.processing, options.selection)
    names = [s.name for s in out.conversion.sources if s.name is not None]
    if source.checkpoint.is_remote:
        ranges = ranges_to_fetch(source.checkpoint, names, whole_files=not out.is_partial)
        fetch = sum(r.end - r.start for r in ranges)
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
    )
    return RevisionCost(item, listing.commit, fetch, output_size(entries, metadata), "convert")
