"""``pythia-tl plan``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pythia_tl.cli.options import CacheDir, DType, Json, Revision, Step
from pythia_tl.plan import build_plan, check_dtype_option, dtype_name
from pythia_tl.source import resolve_source


def plan(
    source: Annotated[str, typer.Argument(help="A local folder, a Hub repo id or a short name.")],
    revision: Revision = None,
    step: Step = None,
    dtype: DType = "auto",
    cache_dir: CacheDir = None,
    json_output: Json = False,
) -> None:
    """Show every output tensor: its source key, the steps, shapes and dtypes (reads no tensor
    data; a Hub revision is downloaded to the cache first)."""
    check_dtype_option(dtype)
    resolved = resolve_source(source, revision=revision, step=step, cache_dir=cache_dir)
    planned = build_plan(resolved.checkpoint, dtype)
    rows = [
        {
            "key": t.key,
            "source": t.source,
            "source_shape": list(t.source_shape) if t.source else None,
            "source_dtype": dtype_name(t.source_dtype) if t.source_dtype else None,
            "steps": [step.describe() for step in t.steps],
            "shape": list(t.shape),
            "dtype": dtype_name(t.dtype),
        }
        for t in planned.tensors
    ]
    if json_output:
        print(
            json.dumps({"tensors": rows, "ignored": list(planned.ignored), "bytes": planned.nbytes})
        )
        return
    table = Table(
        title=f"{resolved.provenance.source}: {len(rows)} tensors, {planned.nbytes / 1e6:.1f} MB"
    )
    for column in ("output key", "shape", "dtype", "source key", "source shape", "steps"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["key"],
            str(row["shape"]),
            row["dtype"],
            row["source"] or "-",
            str(row["source_shape"] or "-"),
            " -> ".join(row["steps"]) or "as is",
        )
    console = Console()
    console.print(table)
    if planned.ignored:
        console.print(
            f"skipped {len(planned.ignored)} non-weight buffers (attention masks, inv_freq)"
        )
