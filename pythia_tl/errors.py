"""The errors pythia-tl raises: each carries one line that says what is wrong and where.

A message may name a parameter of the call that failed (``Param``): ``str(error)`` spells it as
the Python parameter (``overwrite=True``), and the command line spells it as its flag
(``--force``) through ``describe``. Library callers can catch the base class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """A parameter named in a message, e.g. ``Param("dtype")`` or ``Param("overwrite", True)``."""

    name: str
    value: object = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value!r}"


MessagePart = str | Param


class PythiaTLError(Exception):
    """Base class: a failure the user can act on, described in one line."""

    exit_code = 1

    def __init__(self, *parts: MessagePart) -> None:
        self.parts = parts
        super().__init__(self.describe(str))

    def describe(self, spell: Callable[[Param], str]) -> str:
        """The message with every parameter spelled by ``spell``."""
        return "".join(part if isinstance(part, str) else spell(part) for part in self.parts)


class UsageError(PythiaTLError):
    """An argument is wrong (exit code 2, like a command-line usage error)."""

    exit_code = 2


class SourceError(PythiaTLError):
    """The checkpoint cannot be found, fetched or read."""


class SourceUnavailable(SourceError):
    """The source cannot be had here and now (offline, the Hub unreachable, its weights not
    cached): nothing is known against it, so a check that needs it is skipped, not failed."""


class ConfigError(SourceError):
    """config.json is missing, malformed, or disagrees with the weights."""


class CheckpointError(SourceError):
    """A weight file is malformed, or a tensor is missing, unexpected or wrongly shaped."""


class PlanError(PythiaTLError):
    """The conversion table cannot be applied to the source's tensors."""


class OutputError(PythiaTLError):
    """The output file cannot be written where asked."""


class OutputFileError(PythiaTLError):
    """A file that should be a pythia-tl output is unreadable or lacks its metadata."""


class DependencyError(PythiaTLError):
    """An optional package (TransformerLens, transformers) is missing or of a version that
    cannot do what was asked."""


class Notice(UserWarning):
    """Something to know that is not a failure (a wait, a fallback), issued with
    ``warnings.warn``; the CLI prints the first of each kind as one line."""


class RateLimited(Notice):
    """The Hub answered 429 (or 408, or 5xx): a wait (capped) before asking again."""


class HubSlow(Notice):
    """A download through huggingface_hub has had no answer for a while (its own wait for a
    rate limit, or a slow answer); it is given up on at its deadline."""
