"""Tables on a terminal, and plain untruncated lines anywhere else (a pipe, a file).

rich fits a table to the terminal's width, and outside a terminal to 80 columns, cutting long
keys and hashes; text meant for ``grep`` or a file must keep every character. Cells are untrusted
text (tensor names, metadata): their control characters are escaped either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from pythia_tl.cli.cells import cell
from pythia_tl.text import printable

_NUMBER = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders numbers by value: ``blocks.2`` before ``blocks.10``."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part) for part in _NUMBER.split(text) if part
    )


def print_table(
    console: Console,
    columns: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    title: str | None = None,
) -> None:
    """``rows`` under ``columns`` (None: no header row)."""
    if console.is_terminal:
        table = Table(title=cell(title) if title else None, show_header=columns is not None)
        for column in columns or [""] * (len(rows[0]) if rows else 0):
            table.add_column(column)
        for row in rows:
            table.add_row(*(cell(text) for text in row))
        console.print(table)
        return
    lines = [list(columns)] if columns is not None else []
    lines += [[printable(text) for text in row] for row in rows]
    title = printable(title) if title else title
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    if title:
        print(title)
    for line in lines:
        padded = [text.ljust(width) for text, width in zip(line[:-1], widths[:-1], strict=True)]
        print("  ".join([*padded, *line[-1:]]).rstrip())
