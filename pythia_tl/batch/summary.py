"""The batch summary: every revision of the run, what became of it, and why.

Written to ``DIR/summary.json`` (``DIR/summary-<K>-of-<N>.json`` for shard K of N, so shards
never write the same file), atomically, after every finished revision: a run killed mid-way
leaves a summary of what it finished, with the rest still ``pending``.
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
from pythia_tl.batch.work import Shard, WorkItem
from pythia_tl.errors import OutputError
from pythia_tl.output.atomic import atomic_path

Status = Literal["converted", "skipped", "duplicate", "failed", "cancelled", "pending"]
STATUSES: tuple[Status, ...] = ("converted", "skipped", "duplicate", "failed", "cancelled")


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
    converter_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.item.model.name,
            "repo_id": self.item.repo_id,
            "step": self.item.step,
            "revision": self.item.revision,
            "status": self.status,
            "reason": self.reason,
            "output": self.item.relative_output.as_posix(),
            "commit": self.commit,
            "source_sha256": dict(sorted(self.source_sha256.items())),
            "output_sha256": self.output_sha256,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "duplicate_of": self.duplicate_of,
            "converter_version": self.converter_version,
        }


def summary_path(output_dir: Path, shard: Shard | None) -> Path:
    name = "summary.json" if shard is None else f"summary-{shard.index}-of-{shard.count}.json"
    return output_dir / name


def previous_output_sha256(path: Path) -> dict[tuple[str, str | None, int | None], str]:
    """Output sha256 recorded by an earlier summary at ``path``, by (output, commit, bytes).

    A skipped output is not read again (that would make reruns cost a full read of the suite);
    its sha256 is carried over from the summary of the run that wrote it when that summary
    describes the same file.
    """
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        entries = previous["revisions"]
        return {
            (entry["output"], entry["commit"], entry["bytes"]): entry["output_sha256"]
            for entry in entries
            if isinstance(entry.get("output_sha256"), str)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


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

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            entries = [
                self._results.get(item, RevisionResult(item, "pending")).to_json()
                for item in self.items
            ]
            # An interrupted or fail-fast batch records its unfinished revisions as cancelled:
            # it is not complete.
            complete = len(self._results) == len(self.items) and all(
                result.status != "cancelled" for result in self._results.values()
            )
            seconds = (self._ended or time.perf_counter()) - self._started
        counts = {status: sum(e["status"] == status for e in entries) for status in STATUSES}
        return {
            "converter_version": __version__,
            "command": self._command,
            "work_list_size": self._work_list_size,
            "complete": complete,
            "seconds": round(seconds, 3),
            "counts": counts,
            "revisions": entries,
        }

    def write(self) -> None:
        """Replace the summary file atomically (temporary file, fsync, rename)."""
        with self._write_lock:  # one writer at a time, so a later state is never overwritten
            data = json.dumps(self.to_json(), indent=2).encode("utf-8") + b"\n"
            try:
                with atomic_path(self.path, overwrite=True) as temp, open(temp, "xb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot write the summary ({exc})") from None
