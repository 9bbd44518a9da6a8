"""The batch summary: every revision of the run, what became of it, and why.

Written to ``DIR/summary.json`` (``DIR/summary-<K>-of-<N>.json`` for shard K of N, so shards
never write the same file), atomically, after every finished revision: a run killed mid-way
leaves a summary of what it finished, with the rest still ``pending``.

Each write merges with the file on disk under a lock file, so runs sharing one folder never lose
each other's records: revisions this run was not asked about keep their entries, and a revision
another run finished while this one had not (two runs at once) keeps that run's entry.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pythia_tl import __version__
from pythia_tl.batch.locks import held
from pythia_tl.batch.work import Shard, WorkItem
from pythia_tl.errors import OutputError
from pythia_tl.json_schema import SCHEMA_VERSION
from pythia_tl.output.atomic import atomic_path
from pythia_tl.small_files import read_small_file
from pythia_tl.source.schedule import checkpoint_branch, training_order

Status = Literal["converted", "skipped", "duplicate", "failed", "cancelled", "pending"]
STATUSES: tuple[Status, ...] = ("converted", "skipped", "duplicate", "failed", "cancelled")
# A suite of every Pythia model and step is a few MB of summary.
MAX_SUMMARY_BYTES = 256 << 20
# How long a write waits for another run's write of the same summary.
_LOCK_SECONDS = 120.0

# (repo id, revision): an entry written before branches named by tokens were batched has the
# same key, since its revision is ``step<N>`` (and one with no revision string, its step).
EntryKey = tuple[str, str]


@dataclass(frozen=True)
class FileIdentity:
    """What tells that a file changed without reading it: size, modification time, inode."""

    bytes: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return cls(info.st_size, info.st_mtime_ns, info.st_ino)


@dataclass(frozen=True)
class RevisionResult:
    """What became of one revision."""

    item: WorkItem
    status: Status
    reason: str | None = None
    commit: str | None = None
    source_sha256: dict[str, str] = field(default_factory=dict)
    output_sha256: str | None = None
    bytes: int | None = None
    seconds: float = 0.0
    duplicate_of: str | None = None
    # A duplicate: the revision's weights are another checkpoint's (batch.dedupe.duplicate_note).
    anomaly: str | None = None
    # A duplicate: the output (relative to DIR) that holds its weights; it has none of its own.
    weights_in: str | None = None
    converter_version: str | None = None
    # The output file as it was when output_sha256 was taken.
    output_identity: FileIdentity | None = None
    finished_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        identity = self.output_identity
        return {
            "model": self.item.repo_id,
            "model_name": self.item.model.name,
            "step": self.item.step,
            "revision": self.item.revision,
            "status": self.status,
            "reason": self.reason,
            "output": None if self.status == "duplicate" else self.item.relative_output.as_posix(),
            "commit": self.commit,
            "source_sha256": dict(sorted(self.source_sha256.items())),
            "output_sha256": self.output_sha256,
            "bytes": self.bytes,
            "output_mtime_ns": identity.mtime_ns if identity is not None else None,
            "output_inode": identity.inode if identity is not None else None,
            "seconds": round(self.seconds, 3),
            "duplicate_of": self.duplicate_of,
            "anomaly": self.anomaly,
            "weights_in": self.weights_in,
            "converter_version": self.converter_version,
            "finished_at": None if self.status == "pending" else round(self.finished_at, 3),
        }


@dataclass(frozen=True)
class OutputRecord:
    """An output's sha256 as a summary recorded it, with the file's identity at the time
    (None in summaries written before identities were recorded)."""

    sha256: str
    identity: FileIdentity | None

    def describes(self, identity: FileIdentity | None) -> bool:
        """Whether the file, now ``identity``, is the one this record was taken of."""
        return self.identity is not None and self.identity == identity


def summary_path(output_dir: Path, shard: Shard | None) -> Path:
    name = "summary.json" if shard is None else f"summary-{shard.index}-of-{shard.count}.json"
    return output_dir / name


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The revision entries of the summary at ``path``; none when it is missing or unreadable
    (it is only ever a record, never an instruction)."""
    try:
        document = json.loads(read_small_file(path, MAX_SUMMARY_BYTES).decode("utf-8"))
        entries = document["revisions"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if _entry_key(entry) is not None]


def recorded_outputs(path: Path) -> dict[str, OutputRecord]:
    """Output sha256 recorded by the summary at ``path``, by output path (relative to DIR).

    A skipped output is not read again when the file is still the one recorded (same size,
    modification time and inode): rereading would make reruns cost a full read of the suite.
    """
    records = {}
    for entry in read_entries(path):
        output, sha256 = entry.get("output"), entry.get("output_sha256")
        if isinstance(output, str) and isinstance(sha256, str):
            records[output] = OutputRecord(sha256, _identity(entry))
    return records


def recorded_duplicates(path: Path) -> dict[EntryKey, tuple[str, dict[str, str]]]:
    """The duplicates the summary at ``path`` recorded: (repo id, revision) -> (commit, weight
    sha256), so that a rerun can settle them without the Hub."""
    found = {}
    for entry in read_entries(path):
        commit, sha256 = entry.get("commit"), entry.get("source_sha256")
        if entry.get("status") != "duplicate" or not isinstance(commit, str):
            continue
        if isinstance(sha256, dict) and sha256 and all(isinstance(v, str) for v in sha256.values()):
            key = _entry_key(entry)
            if key is not None:
                found[key] = (commit, {str(k): v for k, v in sha256.items()})
    return found


def _identity(entry: dict[str, Any]) -> FileIdentity | None:
    fields = (entry.get("bytes"), entry.get("output_mtime_ns"), entry.get("output_inode"))
    if all(isinstance(value, int) and not isinstance(value, bool) for value in fields):
        size, mtime_ns, inode = fields
        return FileIdentity(size, mtime_ns, inode)  # type: ignore[arg-type]
    return None


def _entry_key(entry: object) -> EntryKey | None:
    if not isinstance(entry, dict):
        return None
    # "repo_id": summaries written before "model" named the repository.
    repo_id = entry.get("repo_id", entry.get("model"))
    revision, step = entry.get("revision"), entry.get("step")
    if not isinstance(repo_id, str):
        return None
    if isinstance(revision, str):
        return repo_id, revision
    if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        return repo_id, f"step{step}"
    return None


def _entry_order(key: EntryKey) -> tuple[str, tuple[int, int], str]:
    """Entries sort as the work list does: by repository, then training order."""
    repo_id, revision = key
    checkpoint = checkpoint_branch(revision)
    return repo_id, training_order(checkpoint) if checkpoint is not None else (2, 0), revision


class BatchSummary:
    """The results so far, in work-list order; thread-safe."""

    def __init__(
        self, path: Path, items: Sequence[WorkItem], command: dict[str, Any], work_list_size: int
    ) -> None:
        self.path = path
        self.items = tuple(items)
        self._command = command
        self._work_list_size = work_list_size
        self._results: dict[WorkItem, RevisionResult] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._started = time.perf_counter()
        self._started_at = time.time()
        self._ended: float | None = None

    def record(self, result: RevisionResult) -> None:
        with self._lock:
            self._results[result.item] = result

    def close(self) -> None:
        """The run is over: stop the clock the summary reports."""
        with self._lock:
            self._ended = time.perf_counter()

    def result(self, item: WorkItem) -> RevisionResult | None:
        with self._lock:
            return self._results.get(item)

    @property
    def results(self) -> list[RevisionResult]:
        with self._lock:
            return [self._results[item] for item in self.items if item in self._results]

    def counts(self) -> dict[str, int]:
        results = self.results
        return {status: sum(r.status == status for r in results) for status in STATUSES}

    @property
    def failed(self) -> list[RevisionResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_json(self, on_disk: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The summary, merged with the entries ``on_disk`` of the file it replaces.

        ``counts`` and ``complete`` describe this run's revisions; ``folder`` the same over every
        record the file keeps (earlier runs' too, of other models or steps)."""
        merged: dict[EntryKey, dict[str, Any]] = {}
        for entry in on_disk:
            key = _entry_key(entry)
            if key is not None:
                merged[key] = entry
        with self._lock:
            for item in self.items:
                key = (item.repo_id, item.revision)
                result = self._results.get(item)
                if result is not None:
                    merged[key] = result.to_json()
                elif not self._finished_meanwhile(merged.get(key)):
                    merged[key] = RevisionResult(item, "pending").to_json()
            seconds = (self._ended or time.perf_counter()) - self._started
        entries = [merged[key] for key in sorted(merged, key=_entry_order)]
        this_run = [merged[(item.repo_id, item.revision)] for item in self.items]
        return {
            "schema": SCHEMA_VERSION,
            "converter_version": __version__,
            "command": self._command,
            "work_list_size": self._work_list_size,
            "complete": _complete(this_run),
            "seconds": round(seconds, 3),
            "counts": _counts(this_run),
            "folder": {
                "revisions": len(entries),
                "complete": _complete(entries),
                "counts": _counts(entries),
            },
            "revisions": entries,
        }

    def _finished_meanwhile(self, entry: dict[str, Any] | None) -> bool:
        """Whether another run sharing the folder finished this revision since this run began."""
        finished = entry.get("finished_at") if entry is not None else None
        return isinstance(finished, (int, float)) and finished >= self._started_at

    def write(self) -> None:
        """Merge with the summary on disk and replace it atomically (temporary file, fsync,
        rename), holding the summary's lock file."""
        with self._write_lock:  # one writer at a time, so a later state is never overwritten
            try:
                with held(self.path.parent, Path(self.path.name), _LOCK_SECONDS):
                    document = self.to_json(read_entries(self.path))
                    data = json.dumps(document, indent=2).encode("utf-8") + b"\n"
                    with atomic_path(self.path, overwrite=True) as temp, open(temp, "xb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot write the summary ({exc})") from None


def _counts(entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {status: sum(e.get("status") == status for e in entries) for status in STATUSES}


def _complete(entries: Sequence[dict[str, Any]]) -> bool:
    """Whether every revision finished: an interrupted or fail-fast batch records its
    unfinished revisions as cancelled, so it is not complete."""
    return all(e.get("status") not in ("pending", "cancelled") for e in entries)


def why_not_written(path: Path) -> str:
    """Why a batch wrote no file at ``path``, from the summary of the batch folder it lies in
    (``DIR/<model>/<revision>.safetensors``): a duplicate names the file that holds its weights.
    Empty when no summary says anything of it."""
    folder = path.absolute().parent.parent
    relative = f"{path.parent.name}/{path.name}"
    try:
        summaries = sorted(folder.glob("summary*.json"))
    except OSError:
        return ""
    for summary in summaries:
        for entry in read_entries(summary):
            if entry.get("status") != "duplicate" or entry.get("revision") != path.stem:
                continue
            # "model": the short name, in summaries written before "model_name".
            name = entry.get("model_name", entry.get("model"))
            if f"{name}/{entry.get('revision')}.safetensors" != relative:
                continue
            held_by = entry.get("weights_in")
            if isinstance(held_by, str):
                return (
                    f": not written by the batch, because {entry.get('anomaly')} (see "
                    f"{summary.name}); its weights are in {folder / held_by}"
                )
    return ""
