"""Running a batch's work list: resume, describe, group duplicates, convert on ``jobs`` threads.

1. Every output already on disk is judged from its metadata (no network): up to date ones are
   skipped.
2. Every other revision is described by the Hub (one API call each, in the thread pool): its
   commit and the LFS sha256 of its weight files, before anything is downloaded.
3. Revisions with the same weights (same repository, same sha256 set) form a group; a group runs
   in one thread: its first revision is converted (or an up-to-date output on disk serves), the
   others are published as links to that output and are never downloaded.
4. Groups run ``jobs`` at a time. Threads suffice: downloads wait on the network and torch
   releases the GIL while it converts; each thread holds one conversion, whose memory is bounded
   by its largest tensor, so the run's memory is bounded by ``jobs`` conversions.

A failed revision does not stop the others unless ``fail_fast``; revisions that never started
are then reported as cancelled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pythia_tl.batch.dedupe import WeightsKey, weights_key
from pythia_tl.batch.locks import Stopped, held
from pythia_tl.batch.request import BatchRequest, WorkList
from pythia_tl.batch.resume import ExistingOutput, Requirements, judge_existing
from pythia_tl.batch.revision_job import (
    BatchCancelled,
    PendingRevision,
    convert_revision,
    record_duplicate,
)
from pythia_tl.batch.summary import (
    BatchSummary,
    FileIdentity,
    OutputRecord,
    RevisionResult,
    recorded_duplicates,
    recorded_outputs,
    summary_path,
)
from pythia_tl.batch.work import WorkItem
from pythia_tl.engine.hashing import file_sha256
from pythia_tl.errors import PythiaTLError
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import RevisionListing, describe_revision
from pythia_tl.hub.revision import CachedTokenizers
from pythia_tl.output.atomic import remove_stale_temporaries

# After a stop, how long the running conversions are waited for (each stops at its next
# tensor); the command line then ends the process even if one is still asleep.
STOP_GRACE_SECONDS = 0.8


class BatchReporter(Protocol):
    """Receives progress; called from worker threads."""

    def started(self, total: int) -> None: ...

    def wrote(self, nbytes: int) -> None: ...

    def finished(self, result: RevisionResult) -> None: ...


class SilentReporter:
    def started(self, total: int) -> None:
        pass

    def wrote(self, nbytes: int) -> None:
        pass

    def finished(self, result: RevisionResult) -> None:
        pass


@dataclass
class _Group:
    """Revisions with the same weights; ``first`` is an up-to-date output that serves them all."""

    members: list[PendingRevision] = field(default_factory=list)
    first: RevisionResult | None = None


def run_batch(
    request: BatchRequest, work: WorkList, reporter: BatchReporter | None = None
) -> BatchSummary:
    """Do the planned work; the returned summary (also written to disk) holds every result."""
    return _BatchRun(request, work, reporter or SilentReporter()).run()


class _BatchRun:
    def __init__(self, request: BatchRequest, work: WorkList, reporter: BatchReporter) -> None:
        self.request = request
        self.work = work
        self.reporter = reporter
        self.stop = threading.Event()
        self.tokenizers = CachedTokenizers()
        path = summary_path(request.output_dir, request.shard)
        self.records = recorded_outputs(path)
        # Read before this run rewrites the summary (its unfinished entries become pending).
        self.duplicates = recorded_duplicates(path)
        self.summary = BatchSummary(path, work.items, _command(request), work.work_list_size)

    def run(self) -> BatchSummary:
        request = self.request
        request.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(request.output_dir)
        for model in dict.fromkeys(item.model for item in self.work.items):
            (request.output_dir / model.name).mkdir(exist_ok=True)
            remove_stale_temporaries(request.output_dir / model.name)
        self.summary.write()
        self.reporter.started(len(self.work.items))
        pending, ready = self._resume()
        self.summary.write()  # once for every revision _resume settled
        pool = ThreadPoolExecutor(max_workers=request.jobs, thread_name_prefix="pythia-tl-batch")
        futures: list[Future[None]] = []
        try:
            described = self._describe(pool, pending, ready)
            groups = self._group(described, ready)
            futures.extend(pool.submit(self._run_group, group) for group in groups)
            for future in as_completed(futures):
                future.result()
        except BaseException as exc:
            # Running conversions stop at their next tensor; queued ones never start. A worker
            # asleep in a rate-limit wait is not waited for beyond STOP_GRACE_SECONDS.
            self.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            wait_for(futures, timeout=STOP_GRACE_SECONDS)
            name = type(exc).__name__
            reason = f"batch aborted by {name}: {exc}" if isinstance(exc, Exception) else name
            self._cancel_the_rest(f"not finished: {reason}")
            self.summary.close()
            self.summary.write()
            raise
        pool.shutdown(wait=True)
        self._cancel_the_rest("not started: fail-fast stopped the batch after a failure")
        self.summary.close()
        self.summary.write()
        return self.summary

    # --- 1. resume -----------------------------------------------------------------------

    def _resume(self) -> tuple[list[PendingRevision], dict[WeightsKey, RevisionResult]]:
        """Skip what is up to date; return the rest, and the skipped outputs by weights."""
        pending: list[PendingRevision] = []
        ready: dict[WeightsKey, RevisionResult] = {}
        for item in self.work.items:
            requirements = Requirements.of(item.repo_id, self.request.options)
            target = self.request.output_dir / item.relative_output
            identity = FileIdentity.of(target)
            existing = judge_existing(
                target, requirements, self.work.branch_commit(item, self.request.cache_dir)
            )
            checked: tuple[str | None, FileIdentity | None] = (None, None)
            if existing.state in ("current", "unverified"):
                found = self._output_sha256(item, identity)
                if isinstance(found, _Changed):
                    existing = replace(existing, state="stale", reason=found.reason)
                    pending.append(PendingRevision(item, None, existing, identity))
                    continue
                checked = found
            if existing.state == "current":
                self._skip(
                    item, existing, existing.commit, "up to date", ready, checked, write=False
                )
            elif existing.state == "unverified":
                why = self.work.unreachable.get(item.repo_id, "the Hub has no such branch")
                reason = f"up to date, commit not checked ({why})"
                self._skip(item, existing, None, reason, ready, checked, write=False)
            elif existing.state == "foreign":
                self._finish(RevisionResult(item, "failed", reason=existing.reason), write=False)
            else:
                pending.append(PendingRevision(item, None, existing, identity))
        return self._recorded_duplicates(pending, ready), ready

    def _recorded_duplicates(
        self, pending: list[PendingRevision], ready: dict[WeightsKey, RevisionResult]
    ) -> list[PendingRevision]:
        """Settle, without asking the Hub, the duplicates the summary recorded whose branch has
        not moved and whose weights an up-to-date output still holds; return the rest."""
        recorded = self.duplicates
        rest = []
        for revision in pending:
            item = revision.item
            found = recorded.get((item.repo_id, item.revision))
            commit = self.work.branch_commit(item, self.request.cache_dir)
            key = weights_key(item.repo_id, found[1]) if found is not None else None
            if found is None or key not in ready or commit not in (None, found[0]):
                rest.append(revision)
                continue
            duplicate = record_duplicate(
                replace(revision, listing=None), ready[key], self.request.output_dir
            )
            self._finish(replace(duplicate, commit=found[0], source_sha256=found[1]), write=False)
        return rest

    def _output_sha256(
        self, item: WorkItem, identity: FileIdentity | None
    ) -> tuple[str | None, FileIdentity | None] | _Changed:
        """The sha256 of an up-to-date output, and the file identity it was taken of.

        Taken from the summary's record while the file is the one recorded; read again when it
        is not (or with ``recheck``), and _Changed when it no longer has the recorded sha256.
        Without a record (and without ``recheck``) the sha256 is left unknown, never guessed.
        """
        output = item.relative_output.as_posix()
        record: OutputRecord | None = self.records.get(output)
        if record is not None and record.describes(identity) and not self.request.recheck:
            return record.sha256, identity
        if record is None and not self.request.recheck:
            return None, None
        target = self.request.output_dir / item.relative_output
        digest = file_sha256(target)
        if record is not None and digest != record.sha256:
            return _Changed(
                f"changed since it was written (sha256 {digest}, the summary records "
                f"{record.sha256})"
            )
        return digest, identity

    def _skip(
        self,
        item: WorkItem,
        existing: ExistingOutput,
        commit: str | None,
        reason: str,
        ready: dict[WeightsKey, RevisionResult],
        checked: tuple[str | None, FileIdentity | None] = (None, None),
        write: bool = True,
    ) -> None:
        sha256, identity = checked
        result = RevisionResult(
            item,
            "skipped",
            reason=reason,
            commit=commit,
            source_sha256=existing.source_sha256,
            output_sha256=sha256,
            bytes=existing.bytes,
            converter_version=existing.converter_version,
            output_identity=identity,
        )
        key = weights_key(item.repo_id, existing.source_sha256)
        if key is not None:
            ready.setdefault(key, result)
        self._finish(result, write=write)

    # --- 2. describe -----------------------------------------------------------------------

    def _describe(
        self,
        pool: ThreadPoolExecutor,
        pending: Sequence[PendingRevision],
        ready: dict[WeightsKey, RevisionResult],
    ) -> list[PendingRevision]:
        """Ask the Hub about each pending revision; drop those that fail or turn out current."""
        futures: dict[Future[RevisionListing | None], PendingRevision] = {
            pool.submit(self._listing, revision.item): revision for revision in pending
        }
        listings: dict[WorkItem, RevisionListing | None] = {}
        for future in as_completed(futures):
            item = futures[future].item
            try:
                listings[item] = future.result()
            except PythiaTLError as exc:
                self._finish(RevisionResult(item, "failed", reason=" ".join(str(exc).split())))
        described = []
        for revision in pending:
            if revision.item not in listings:
                continue
            listing = listings[revision.item]
            existing = revision.existing
            if listing is not None and existing.has_the_weights_of(listing):
                reason = f"up to date (same weights as commit {existing.commit})"
                checked = self._output_sha256(revision.item, revision.identity)
                if not isinstance(checked, _Changed):
                    self._skip(revision.item, existing, listing.commit, reason, ready, checked)
                    continue
                existing = replace(existing, state="stale", reason=checked.reason)
            described.append(replace(revision, listing=listing, existing=existing))
        return described

    def _listing(self, item: WorkItem) -> RevisionListing | None:
        if self.work.branches.get(item.repo_id) is None or self.stop.is_set():
            return None
        try:
            return describe_revision(item.repo_id, item.revision)
        except HubUnreachable:
            return None  # converted from the cache, if it is there

    # --- 3. group --------------------------------------------------------------------------

    def _group(
        self, described: Iterable[PendingRevision], ready: dict[WeightsKey, RevisionResult]
    ) -> list[_Group]:
        groups: dict[WeightsKey, _Group] = {}
        alone: list[_Group] = []
        for revision in described:
            listing = revision.listing
            key = weights_key(revision.item.repo_id, listing.weight_sha256) if listing else None
            if key is None:
                alone.append(_Group([revision]))
                continue
            group = groups.setdefault(key, _Group(first=ready.get(key)))
            group.members.append(revision)
        ordered = [*groups.values(), *alone]
        ordered.sort(key=lambda group: group.members[0].item)
        return ordered

    # --- 4. convert ------------------------------------------------------------------------

    def _run_group(self, group: _Group) -> None:
        first = group.first
        # The latest checkpoint converts; the earlier ones are its duplicates (see batch.dedupe).
        for revision in sorted(group.members, key=lambda r: r.item.position, reverse=True):
            if self.stop.is_set():
                return
            output_dir, relative = self.request.output_dir, revision.item.relative_output
            try:
                # Another run writing into this folder converts this output, or waits for it.
                with held(output_dir, relative, stopped=self.stop.is_set):
                    result = self._done_meanwhile(revision) or self._make(revision, first)
                    self._finish(result)
            except Stopped:
                return
            if first is None and result.status == "converted":
                first = result

    def _make(self, revision: PendingRevision, first: RevisionResult | None) -> RevisionResult:
        if first is not None:
            return record_duplicate(revision, first, self.request.output_dir)
        return convert_revision(
            revision,
            self.request.output_dir,
            self.request.options,
            self.request.cache_dir,
            self._on_bytes,
            self.stop.is_set,
            download=self.request.keep_downloads,
            tokenizers=self.tokenizers,
        )

    def _done_meanwhile(self, revision: PendingRevision) -> RevisionResult | None:
        """A skip when another run wrote this output since it was judged, and it is now up to
        date; None when this run must make it."""
        item = revision.item
        target = self.request.output_dir / item.relative_output
        identity = FileIdentity.of(target)
        if identity is None or identity == revision.identity:
            return None
        requirements = Requirements.of(item.repo_id, self.request.options)
        existing = judge_existing(
            target, requirements, self.work.branch_commit(item, self.request.cache_dir)
        )
        if existing.state not in ("current", "unverified"):
            return None
        self.records = recorded_outputs(self.summary.path)  # the other run's record
        checked = self._output_sha256(item, identity)
        if isinstance(checked, _Changed):
            return None
        sha256, identity = checked
        if sha256 is None:
            sha256, identity = file_sha256(target), identity  # just written: worth the read
        return RevisionResult(
            item,
            "skipped",
            reason="up to date (converted by another run meanwhile)",
            commit=existing.commit,
            source_sha256=existing.source_sha256,
            output_sha256=sha256,
            bytes=existing.bytes,
            converter_version=existing.converter_version,
            output_identity=identity,
        )

    def _on_bytes(self, nbytes: int, total: int) -> None:
        if self.stop.is_set():
            raise BatchCancelled
        self.reporter.wrote(nbytes)

    def _finish(self, result: RevisionResult, *, write: bool = True) -> None:
        """Record ``result``; ``write``: rewrite summary.json now (callers settling many
        revisions at once write it once after them)."""
        self.summary.record(result)
        if write:
            self.summary.write()
        self.reporter.finished(result)
        if result.status == "failed" and self.request.fail_fast:
            self.stop.set()

    def _cancel_the_rest(self, reason: str) -> None:
        for item in self.work.items:
            if self.summary.result(item) is None:
                self._finish(RevisionResult(item, "cancelled", reason=reason), write=False)


@dataclass(frozen=True)
class _Changed:
    """An output that no longer has the sha256 the summary recorded for it."""

    reason: str


def _command(request: BatchRequest) -> dict[str, Any]:
    return {
        "models": list(dict.fromkeys(model.repo_id for model in request.models)),
        "steps": str(request.steps),
        "dtype": request.options.dtype,
        "processing": list(request.options.processing.passes),
        "selection": request.options.selection.to_json(),
        "shard": str(request.shard) if request.shard is not None else None,
        "jobs": request.jobs,
        "keep_downloads": request.keep_downloads,
        "fail_fast": request.fail_fast,
        "recheck": request.recheck,
        "allow_nonfinite": request.options.allow_nonfinite,
    }
