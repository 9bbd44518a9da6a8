"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pythia_tl.plan import DTYPES

# typer needs Optional[...] spelled this way on Python 3.10 for options that may be absent.
Revision = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--revision", help="Hub branch, tag or commit (default: main)."),
]
Step = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--step", help="Training step N, i.e. revision stepN, checked against the schedule."
    ),
]
DType = Annotated[
    str,
    typer.Option(
        "--dtype",
        help=f"Output dtype: auto (the source's float dtype), {', '.join(DTYPES)}.",
    ),
]
CacheDir = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--cache-dir", help="huggingface_hub cache folder (default: its usual cache)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
