"""The library's notices (``pythia_tl.errors.Notice`` warnings) as one line each on stderr: the
first of each kind in a run, so a rate limit met by eight connections is said once."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import TextIO

from pythia_tl.errors import Notice
from pythia_tl.text import printable

ShowWarning = Callable[..., None]


def notices_once(fallback: ShowWarning) -> ShowWarning:
    """A ``warnings.showwarning`` that prints each kind of Notice once as ``note: ...`` and
    hands every other warning to ``fallback``."""
    shown: set[type[Warning]] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not issubclass(category, Notice):
            fallback(message, category, filename, lineno, file, line)
            return
        if category in shown:
            return
        shown.add(category)
        print(f"note: {' '.join(printable(str(message)).split())}", file=sys.stderr, flush=True)

    return show


def show_notices() -> None:
    """Within a ``warnings.catch_warnings()`` block: let Notices through, once each."""
    warnings.simplefilter("always", Notice)
    warnings.showwarning = notices_once(warnings.showwarning)
