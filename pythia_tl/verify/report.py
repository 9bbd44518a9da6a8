"""What ``verify`` found: one result per check, and the report that gathers them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pythia_tl.errors import MessagePart, Param, PythiaTLError

Status = Literal["ok", "failed", "skipped"]
CHECK_NAMES = ("integrity", "metadata", "source", "logits")


class VerificationFailed(PythiaTLError):
    """A file did not pass verification (the report says which checks failed and why)."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check: a status, one line saying why (which may name a parameter, as
    errors do), and details for a JSON report."""

    name: str
    status: Status
    parts: tuple[MessagePart, ...]
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, name: str, detail: str, **data: Any) -> Check:
        return cls(name, "ok", (detail,), data)

    @classmethod
    def failed(cls, name: str, *parts: MessagePart, **data: Any) -> Check:
        return cls(name, "failed", parts, data)

    @classmethod
    def skipped(cls, name: str, *parts: MessagePart) -> Check:
        return cls(name, "skipped", parts)

    @property
    def detail(self) -> str:
        return self.describe(str)

    def describe(self, spell: Callable[[Param], str]) -> str:
        return "".join(part if isinstance(part, str) else spell(part) for part in self.parts)

    def to_json(self, spell: Callable[[Param], str] = str) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.describe(spell),
            **self.data,
        }


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
            f"{self.file}: verification failed: {first.name}: ", *first.parts, more
        )

    def to_json(self, spell: Callable[[Param], str] = str) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "ok": self.ok,
            "checks": [check.to_json(spell) for check in self.checks],
        }
