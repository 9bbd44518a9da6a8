"""The one JSON object a ``--json`` command prints on stdout.

A command that fails after printing its report (``verify``, ``batch``) has said everything in it
and raises ``ReportedFailure``; one that fails before gets ``{"error": ..., "exit_code": ...}``
instead (``cli.main``). Every object's keys are documented in docs/json.md.
"""

from __future__ import annotations

import json

from pythia_tl.errors import PythiaTLError
from pythia_tl.json_schema import with_schema


class ReportedFailure(PythiaTLError):
    """A failure the command's own report (on stdout, with ``--json``) already describes."""


def print_json(value: dict[str, object]) -> None:
    print(json.dumps(with_schema(value)))
