"""The checkpoint anomalies reported upstream (``known_anomalies.json``, shipped as data), and
which audit findings they explain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from importlib.resources import files

from pythia_tl.audit.findings import Status

_DATA = "known_anomalies.json"


@dataclass(frozen=True)
class KnownAnomaly:
    """One upstream report: its issue, the finding it explains, where it applies."""

    issue: str
    kind: Status | str  # "*": any finding
    models: tuple[str, ...]
    # Inclusive step ranges; None: any step.
    steps: tuple[tuple[int, int], ...] | None
    revisions: tuple[str, ...] | None
    summary: str

    def explains(self, repo_id: str, revision: str, step: int | None, status: str) -> bool:
        if self.kind not in ("*", status):
            return False
        if not any(fnmatchcase(repo_id, pattern) for pattern in self.models):
            return False
        if self.revisions is not None and revision not in self.revisions:
            return False
        if self.steps is None:
            return True
        return step is not None and any(low <= step <= high for low, high in self.steps)


@cache
def known_anomalies() -> tuple[KnownAnomaly, ...]:
    """The shipped reports, in the file's order."""
    document = json.loads(files("pythia_tl.audit").joinpath(_DATA).read_text("utf-8"))
    return tuple(
        KnownAnomaly(
            issue=entry["issue"],
            kind=entry["kind"],
            models=tuple(entry["models"]),
            steps=None if entry["steps"] is None else tuple(map(tuple, entry["steps"])),
            revisions=None if entry["revisions"] is None else tuple(entry["revisions"]),
            summary=entry["summary"],
        )
        for entry in document["anomalies"]
    )


def explained_by(repo_id: str, revision: str, step: int | None, status: str) -> list[str]:
    """The issues of the known reports that explain this finding."""
    return [
        known.issue
        for known in known_anomalies()
        if known.explains(repo_id, revision, step, status)
    ]
