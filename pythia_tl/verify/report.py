"""What ``verify`` found: one result per check, and the report that gathers them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pythia_tl.errors import PythiaTLError

Status = Literal["ok", "failed", "skipped"]
CHECK_NAMES = ("integrity", "metadata", "source", "logits")


class VerificationFailed(PythiaTLError):
    """A file did not pass verification (the report says which checks failed and why)."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check: a status, one line saying why, and details for ``--json``."""

    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, name: str, detail: str, **data: Any) -> Check:
        return cls(name, "ok", detail, data)

    @classmethod
    def failed(cls, name: str, detail: str, **data: Any) -> Check:
        return cls(name, "failed", detail, data)

    @classmethod
    def skipped(cls, name: str, detail: str) -> Check:
        return cls(name, "skipped", detail)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.data}


@dataclass(frozen=True)
class VerifyReport:
    file: Path
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (checks skipped on request do not count against it)."""
        return all(check.status != "failed" for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.status == "failed")

    def raise_if_failed(self) -> None:
        """Raise VerificationFailed naming the file and the first failed check."""
        if self.ok:
            return
        first = self.failures[0]
        more = (
            f" (and {len(self.failures) - 1} more failed checks)" if len(self.failures) > 1 else ""
        )
        raise VerificationFailed(
            f"{self.file}: verification failed: {first.name}: {first.detail}{more}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "ok": self.ok,
            "checks": [check.to_json() for check in self.checks],
        }
