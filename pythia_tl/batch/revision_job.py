"""One revision's work in a batch: download and convert it, or publish a duplicate's output."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pythia_tl import __version__
from pythia_tl.batch.dedupe import duplicate_note, remove_stale_output
from pythia_tl.batch.resume import ExistingOutput
from pythia_tl.batch.summary import FileIdentity, RevisionResult
from pythia_tl.batch.work import WorkItem
from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.errors import PythiaTLError
from pythia_tl.hub.listing import RevisionListing
from pythia_tl.hub.revision import CachedTokenizers, download_revision, fetch_revision
from pythia_tl.output.metadata import read_output
from pythia_tl.source import open_hub_revision


class BatchCancelled(Exception):
    """Raised inside a conversion to abandon it, because the batch is stopping (fail-fast after
    a failure, or an interrupt); the writer removes its temporary file."""


@dataclass(frozen=True)
class PendingRevision:
    """A revision to convert: what the Hub lists for it (None when it cannot be asked) and what
    its output path holds now."""

    item: WorkItem
    listing: RevisionListing | None
    existing: ExistingOutput
    # The output file when the run judged it (None: there was none).
    identity: FileIdentity | None = None


def convert_revision(
    pending: PendingRevision,
    output_dir: Path,
    options: ConvertOptions,
    cache_dir: Path | None,
    on_bytes: Callable[[int, int], None],
    stopped: Callable[[], bool],
    download: bool = False,
    tokenizers: CachedTokenizers | None = None,
) -> RevisionResult:
    """Stream (or ``download``, or find in the cache) and convert one revision; never raises
    for a revision's own failure, which the result records. ``tokenizers``: the tokenizer files
    the batch has cached already."""
    item, listing = pending.item, pending.listing
    started = time.perf_counter()
    target = output_dir / item.relative_output
    try:
        if listing is not None:
            fetched = download_revision(listing, cache_dir, weights=download, tokenizers=tokenizers)
        else:
            fetched = fetch_revision(item.repo_id, item.revision, cache_dir, weights=download)
        if stopped():
            raise BatchCancelled
        source = open_hub_revision(item.model, fetched)
        replacing = pending.existing.state != "missing"
        run_options = replace(options, overwrite=replacing, hash_output=True)
        result = convert(source, target, run_options, on_bytes=on_bytes)
        identity = FileIdentity.of(target)
        written = read_output(target)
        return RevisionResult(
            item,
            "converted",
            reason=f"replaced the output ({pending.existing.reason})" if replacing else None,
            commit=result.commit,
            source_sha256=written.source_files,
            output_sha256=result.sha256,
            bytes=result.bytes,
            seconds=time.perf_counter() - started,
            converter_version=__version__,
            output_identity=identity,
        )
    except BatchCancelled:
        return RevisionResult(item, "cancelled", reason="stopped before it finished")
    except PythiaTLError as exc:
        return _failed(item, str(exc), started, listing)
    except Exception as exc:  # one revision's unexpected error must not stop the others
        return _failed(item, f"unexpected {type(exc).__name__}: {exc}", started, listing)


def record_duplicate(
    pending: PendingRevision, first: RevisionResult, output_dir: Path
) -> RevisionResult:
    """A revision with the same weights as ``first`` (same repository): no file of its own (see
    ``batch.dedupe``), and a result that names the file holding its weights."""
    item, listing = pending.item, pending.listing
    started = time.perf_counter()
    try:
        removed = remove_stale_output(output_dir / item.relative_output)
    except PythiaTLError as exc:
        return _failed(item, str(exc), started, listing)
    held_by = first.item.relative_output.as_posix()
    note = "; removed the file an earlier run left there" if removed else ""
    return RevisionResult(
        item,
        "duplicate",
        reason=f"not written: same weight files (sha256) as {first.item.revision}, whose file "
        f"{held_by} holds them{note}",
        commit=listing.commit if listing is not None else None,
        source_sha256=listing.weight_sha256 if listing is not None else first.source_sha256,
        seconds=time.perf_counter() - started,
        duplicate_of=first.item.revision,
        anomaly=duplicate_note(item, first.item),
        weights_in=held_by,
    )


def _failed(
    item: WorkItem, reason: str, started: float, listing: RevisionListing | None
) -> RevisionResult:
    return RevisionResult(
        item,
        "failed",
        reason=" ".join(reason.split()),
        commit=listing.commit if listing is not None else None,
        source_sha256=listing.weight_sha256 if listing is not None else {},
        seconds=time.perf_counter() - started,
    )
