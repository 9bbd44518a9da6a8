"""The errors pythia-tl raises: each carries one line that says what is wrong and where.

The CLI prints ``str(error)`` on stderr and exits with ``exit_code``; library callers can catch the
base class.
"""

from __future__ import annotations


class PythiaTLError(Exception):
    """Base class: a failure the user can act on, described in one line."""

    exit_code = 1


class UsageError(PythiaTLError):
    """A flag or argument is wrong (exit code 2, like a command-line usage error)."""

    exit_code = 2


class SourceError(PythiaTLError):
    """The checkpoint cannot be found, fetched or read."""


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
