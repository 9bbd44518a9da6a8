"""A progress bar over bytes written, shown only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextmanager
def byte_progress(label: str, silent: bool) -> Iterator[Callable[[int, int], None]]:
    """Yield a callback ``(n, total)`` that advances a bar by n bytes of ``total``."""
    console = Console(file=sys.stderr)
    if silent or not console.is_terminal:
        yield lambda n, total: None
        return
    columns = (
        TextColumn("{task.description}", markup=False),  # a model name is not markup
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=None)

        def advance(n: int, total: int) -> None:
            progress.update(task, total=total, advance=n)

        yield advance
