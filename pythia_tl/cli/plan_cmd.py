"""``pythia-tl plan``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import (
    CacheDir,
    CheckpointIndex,
    Json,
    OutputChoice,
    Revision,
    Step,
    with_output_options,
)
from pythia_tl.cli.tables import print_table

if TYPE_CHECKING:
    from pythia_tl.engine.output_plan import OutputPlan
    from pythia_tl.source.checkpoint import Checkpoint


@with_output_options
def plan(
    source: Annotated[str, typer.Argument(help="A local folder, a Hub repo id or a short name.")],
    revision: Revision = None,
    step: Step = None,
    checkpoint_index: CheckpointIndex = None,
    cache_dir: CacheDir = None,
    json_output: Json = False,
    *,
    choice: OutputChoice,
) -> None:
    """Show every output tensor: its source key, the ops, shapes and dtypes (reads no tensor
    data: of a Hub revision, only the files' headers are fetched)."""
    from pythia_tl.engine.output_plan import plan_output
    from pythia_tl.mapping.plan import plan_conversion
    from pythia_tl.source import resolve_source

    processing = choice.processing
    resolved = resolve_source(
        source,
        revision=revision,
        step=step,
        cache_dir=cache_dir,
        checkpoint_index=checkpoint_index,
        tokenizer=False,
    )
    planned = plan_conversion(resolved.checkpoint, choice.dtype)
    out = plan_output(planned, processing, choice.selection)
    written = out.processing
    rows = [
        {
            "key": t.key,
            "source": t.source,
            "source_shape": list(t.source_shape) if t.source else None,
            "source_dtype": t.source_dtype.name if t.source_dtype else None,
            "ops": list(t.ops),
            "shape": list(t.shape),
            "dtype": t.dtype.name,
            "processing": list(written.passes_for(t.key)),
        }
        for t in out.tensors
    ]
    if json_output:
        print_json(
            {
                "source": resolved.provenance.source,
                "revision": resolved.provenance.revision,
                "commit": resolved.provenance.commit,
                "tensors": rows,
                "ignored": list(planned.ignored),
                "bytes": out.nbytes,
                "read_bytes": _read_bytes(resolved.checkpoint, out),
                "selection": choice.selection.to_json(),
                "processing": list(processing.passes),
                "not_written": list(written.dropped),
                "normalization_type": processing.normalization_type,
            }
        )
        return
    passes = processing.passes
    title = f"{resolved.provenance.source}: {len(rows)} tensors, {out.nbytes / 1e6:.1f} MB"
    columns = ["output key", "shape", "dtype", "source key", "source shape", "ops"]
    cells = []
    for t in out.tensors:
        row = [
            t.key,
            str(list(t.shape)),
            t.dtype.name,
            t.source or "-",
            str(list(t.source_shape)) if t.source else "-",
            " -> ".join(t.ops) or "as is",
        ]
        cells.append(row + ([", ".join(written.passes_for(t.key)) or "-"] if passes else []))
    console = Console()
    print_table(
        console,
        columns + (["processing"] if passes else []),
        cells,
        title=title + (f", processing: {', '.join(passes)}" if passes else ""),
    )
    if written.dropped:
        console.print(
            f"not written: {len(written.dropped)} LayerNorm tensors, folded into their readers "
            f"(normalization_type {processing.normalization_type})",
            soft_wrap=True,
        )
    if planned.ignored:
        console.print(
            f"skipped {len(planned.ignored)} non-weight buffers (attention masks, inv_freq)",
            soft_wrap=True,
        )


def _read_bytes(checkpoint: Checkpoint, out: OutputPlan) -> int:
    """The source bytes the conversion reads (its tensors' byte ranges)."""
    return sum(
        checkpoint.tensors[source.name].span_bytes
        for source in out.conversion.sources
        if source.name is not None
    )
