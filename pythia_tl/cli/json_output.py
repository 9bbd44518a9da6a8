"""The one JSON object a ``--json`` command prints on stdout.

A command that fails after printing its report (``verify``, ``batch``) has said everything in
it; one that fails before gets ``{"error": ..., "exit_code": ...}`` instead (``cli.main``).
"""

from __future__ import annotations

import json

_printed = False


def print_json(value: object) -> None:
    global _printed
    print(json.dumps(value))
    _printed = True


def reset() -> None:
    global _printed
    _printed = False


def printed() -> bool:
    return _printed
