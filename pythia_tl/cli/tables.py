"""Tables on a terminal, and plain untruncated lines anywhere else (a pipe, a file).

rich fits a table to the terminal's width by cutting long keys and hashes, the values people
copy; so a table wider than the terminal is stacked instead: each row's first cell on a line of
its own, then its other cells as ``column: value``, as many to a line as fit, a value too long for
any line whole on its own. Text meant for ``grep`` or a file keeps every character, one row to a
line. Cells are untrusted text (tensor names, metadata): their control characters are escaped
either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from pythia_tl.cli.cells import cell
from pythia_tl.text import printable

_NUMBER = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders numbers by value: ``blocks.2`` before ``blocks.10``."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part) for part in _NUMBER.split(text) if part
    )


# TransformerLens' keys in the order of the model (and of ``plan``): embeddings, blocks, the
# final LayerNorm, the unembedding; any other name after them.
_TL_GROUPS = {"embed": 0, "pos_embed": 0, "blocks": 1, "ln_final": 2, "unembed": 3}


def tl_key_order(name: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """A sort key for TransformerLens keys: ``embed.W_E`` first, ``blocks.2`` before
    ``blocks.10``, ``unembed.*`` last."""
    return _TL_GROUPS.get(name.split(".", 1)[0], len(_TL_GROUPS)), natural_key(name)


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
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(cell(text) for text in row))
        if _natural_width(console, table) <= console.width:
            console.print(table)
        else:
            _print_stacked(console, columns, rows, title)
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


_INDENT = "  "
_GAP = "   "
# A first cell this short (an index, a step) is shown with its column's name.
_SHORT = 8


def _natural_width(console: Console, table: Table) -> int:
    """The width ``table`` takes with no cell cut or wrapped."""
    unbounded = console.options.update_width(1_000_000)
    return Measurement.get(console, unbounded, table).maximum


def _print_stacked(
    console: Console,
    columns: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    title: str | None,
) -> None:
    """Each row as its first cell (named when it is short, as an index is), then its other
    non-empty cells as ``column: value``, packed into lines that fit, the later ones indented."""
    width = console.width
    if title:
        console.print(cell(title), soft_wrap=True)
    for row in rows:
        if columns is None and len(row) == 2 and len(printable(f"{row[0]}: {row[1]}")) <= width:
            console.print(cell(f"{row[0]}: {row[1]}"), soft_wrap=True)  # a key and its value
            continue
        names = list(columns) if columns is not None else [""] * len(row)
        first = f"{names[0]}: {row[0]}" if names[0] and len(row[0]) <= _SHORT else row[0]
        items = [
            f"{name}: {value}" if name else value
            for name, value in zip(names[1:], row[1:], strict=True)
            if value
        ]
        packed = _packed([printable(item) for item in (first, *items)], width - len(_INDENT))
        for number, line in enumerate(packed):
            console.print(Text(line if number == 0 else _INDENT + line), soft_wrap=True)


def _packed(items: Sequence[str], width: int) -> list[str]:
    """``items`` joined into lines of at most ``width`` characters; an item longer than that
    (or holding a line break) takes a line of its own, whole."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(line) + len(_GAP) + len(item) <= width and "\n" not in item:
            line += _GAP + item
            continue
        if line:
            lines.append(line)
        line = item
    if line:
        lines.append(line)
    return lines
