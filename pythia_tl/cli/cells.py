"""Table cells made from untrusted text (tensor names, metadata, Hub answers)."""

from __future__ import annotations

from rich.text import Text

from pythia_tl.text import printable


def cell(text: str) -> Text:
    """``text`` for a rich table or console: control characters escaped, and taken literally
    (a name such as ``[bold]`` is not rich markup)."""
    return Text(printable(text))
