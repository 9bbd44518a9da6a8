"""``pythia-tl plan``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pythia_tl.cli.options import (
    CacheDir,
    CenterUnembed,
    CenterWritingWeights,
    DType,
    FoldLN,
    FoldValueBiases,
    Json,
    Process,
    RefactorFactoredAttnMatrices,
    Revision,
    Step,
)
from pythia_tl.plan import build_plan, check_dtype_option, dtype_name
from pythia_tl.processing import Processing, plan_processing
from pythia_tl.source import resolve_source


def plan(
    source: Annotated[str, typer.Argument(help="A local folder, a Hub repo id or a short name.")],
    revision: Revision = None,
    step: Step = None,
    dtype: DType = "auto",
    cache_dir: CacheDir = None,
    json_output: Json = False,
    fold_ln: FoldLN = False,
    center_writing_weights: CenterWritingWeights = False,
    center_unembed: CenterUnembed = False,
    fold_value_biases: FoldValueBiases = False,
    process: Process = False,
    refactor_factored_attn_matrices: RefactorFactoredAttnMatrices = False,
) -> None:
    """Show every output tensor: its source key, the steps, shapes and dtypes (reads no tensor
    data; a Hub revision is downloaded to the cache first)."""
    check_dtype_option(dtype)
    processing = Processing.from_flags(
        process=process,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
    )
    resolved = resolve_source(source, revision=revision, step=step, cache_dir=cache_dir)
    planned = build_plan(resolved.checkpoint, dtype)
    written = plan_processing(planned, processing)
    rows = [
        {
            "key": t.key,
            "source": t.source,
            "source_shape": list(t.source_shape) if t.source else None,
            "source_dtype": dtype_name(t.source_dtype) if t.source_dtype else None,
            "steps": [step.describe() for step in t.steps],
            "shape": list(t.shape),
            "dtype": dtype_name(t.dtype),
            "processing": list(written.steps_for(t.key)),
        }
        for t in written.tensors
    ]
    if json_output:
        print(
            json.dumps(
                {
                    "tensors": rows,
                    "ignored": list(planned.ignored),
                    "bytes": written.nbytes,
                    "processing": list(processing.steps),
                    "not_written": list(written.dropped),
                    "normalization_type": processing.normalization_type,
                }
            )
        )
        return
    steps = processing.steps
    title = f"{resolved.provenance.source}: {len(rows)} tensors, {written.nbytes / 1e6:.1f} MB"
    table = Table(title=title + (f", processing: {', '.join(steps)}" if steps else ""))
    columns = ["output key", "shape", "dtype", "source key", "source shape", "steps"]
    for column in columns + (["processing"] if steps else []):
        table.add_column(column)
    for row in rows:
        cells = [
            row["key"],
            str(row["shape"]),
            row["dtype"],
            row["source"] or "-",
            str(row["source_shape"] or "-"),
            " -> ".join(row["steps"]) or "as is",
        ]
        table.add_row(*cells, *([", ".join(row["processing"]) or "-"] if steps else []))
    console = Console()
    console.print(table)
    if written.dropped:
        console.print(
            f"not written: {len(written.dropped)} LayerNorm tensors, folded into their readers "
            f"(normalization_type {processing.normalization_type})"
        )
    if planned.ignored:
        console.print(
            f"skipped {len(planned.ignored)} non-weight buffers (attention masks, inv_freq)"
        )
