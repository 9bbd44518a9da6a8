"""What an audit found, revision by revision, and the report it makes of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# ok: nothing found. identical: the whole weight set (LFS sha256) equals another revision's.
# shares_shards: some weight files equal another revision's. same_tensors (--deep): every
# tensor's data equals another revision's though the files differ. missing: a branch of the
# schedule the Hub lacks. incomplete: the revision lacks files its weights need.
Status = Literal["ok", "identical", "shares_shards", "same_tensors", "missing", "incomplete"]
STATUSES: tuple[Status, ...] = (
    "ok",
    "identical",
    "shares_shards",
    "same_tensors",
    "missing",
    "incomplete",
)


@dataclass(frozen=True)
class RevisionRef:
    """A revision of one of the audited repositories."""

    repo_id: str
    revision: str

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def named_from(self, repo_id: str) -> str:
        """The revision alone within its own repository, else ``repo@revision``."""
        return self.revision if self.repo_id == repo_id else str(self)


@dataclass(frozen=True)
class RevisionFinding:
    """One revision's finding."""

    ref: RevisionRef
    # Index in the model's checkpoint list (None for main, or a branch outside it).
    index: int | None
    step: int | None
    commit: str | None
    status: Status
    # The revisions this one equals (identical, same_tensors) or shares files with.
    same_as: tuple[RevisionRef, ...] = ()
    # shares_shards: file name -> the revisions that hold the same file.
    shared_files: dict[str, tuple[RevisionRef, ...]] = field(default_factory=dict)
    # incomplete: the files the revision lacks.
    missing_files: tuple[str, ...] = ()
    reason: str | None = None
    # Upstream issues that report this finding (known_anomalies.json).
    known: tuple[str, ...] = ()

    @property
    def same_as_main(self) -> bool:
        return any(
            ref.revision == "main" and ref.repo_id == self.ref.repo_id for ref in self.same_as
        )

    @property
    def is_anomaly(self) -> bool:
        return self.status != "ok"

    def describe(self) -> str:
        """What was found, in a few words (the table's detail column)."""
        here = self.ref.repo_id
        if self.status in ("identical", "same_tensors") and self.same_as:
            shown = self.same_as[0].named_from(here)
            more = f" (and {len(self.same_as) - 1} more)" if len(self.same_as) > 1 else ""
            what = "same files as" if self.status == "identical" else "same tensors as"
            return f"{what} {shown}{more}"
        if self.status == "shares_shards":
            parts = [
                f"{name} = {refs[0].named_from(here)}" for name, refs in self.shared_files.items()
            ]
            return "; ".join(parts)
        if self.status == "incomplete" and self.missing_files:
            return "lacks " + ", ".join(self.missing_files)
        return self.reason or ""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.ref.repo_id,
            "revision": self.ref.revision,
            "index": self.index,
            "step": self.step,
            "commit": self.commit,
            "status": self.status,
            "same_as": [str(ref) for ref in self.same_as],
            "same_as_main": self.same_as_main,
            "shared_files": {
                name: [str(ref) for ref in refs] for name, refs in self.shared_files.items()
            },
            "missing_files": list(self.missing_files),
            "reason": self.reason,
            "known": list(self.known),
        }


@dataclass(frozen=True)
class AuditReport:
    """Every audited revision, in model then checkpoint order (main last)."""

    models: tuple[str, ...]
    steps: str
    deep: bool
    findings: tuple[RevisionFinding, ...]
    # --deep: the bytes fetched from the Hub for the tensor fingerprints.
    fingerprint_bytes: int = 0
    # --deep: revisions whose tensors could not be fingerprinted, and why.
    not_fingerprinted: dict[str, str] = field(default_factory=dict)

    @property
    def anomalies(self) -> list[RevisionFinding]:
        return [finding for finding in self.findings if finding.is_anomaly]

    @property
    def exit_code(self) -> int:
        """0 when nothing is found, 1 when anything is (so CI can gate a suite on it)."""
        return 1 if self.anomalies else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    def to_json(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "steps": self.steps,
            "deep": self.deep,
            "counts": self.counts(),
            "anomalies": len(self.anomalies),
            "unexplained": sum(not f.known for f in self.anomalies),
            "fingerprint_bytes": self.fingerprint_bytes if self.deep else None,
            "not_fingerprinted": dict(self.not_fingerprinted),
            "exit_code": self.exit_code,
            "revisions": [finding.to_json() for finding in self.findings],
        }
