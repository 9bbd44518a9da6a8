"""``pythia-tl convert``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pythia_tl.cli.options import (
    CacheDir,
    CenterUnembed,
    CenterWritingWeights,
    DType,
    FoldLN,
    FoldValueBiases,
    Json,
    Process,
    Quiet,
    RefactorFactoredAttnMatrices,
    Revision,
    Step,
)
from pythia_tl.cli.progress import byte_progress
from pythia_tl.convert import ConvertOptions, default_output_name
from pythia_tl.convert import convert as run_conversion
from pythia_tl.plan import check_dtype_option
from pythia_tl.processing import Processing
from pythia_tl.source import resolve_source

CheckpointIndex = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--checkpoint-index",
        help="Index into the model's checkpoints, as TransformerLens' checkpoint_index "
        "(-1 the last; see 'pythia-tl checkpoints MODEL').",
    ),
]


def convert(
    source: Annotated[
        str,
        typer.Argument(
            help="A local folder, a Hub repo id (EleutherAI/pythia-70m) or a short name."
        ),
    ],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="Output file (default: <model-name>[-<revision>].safetensors here).",
        ),
    ] = None,
    revision: Revision = None,
    step: Step = None,
    checkpoint_index: CheckpointIndex = None,
    dtype: DType = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    json_output: Json = False,
    fold_ln: FoldLN = False,
    center_writing_weights: CenterWritingWeights = False,
    center_unembed: CenterUnembed = False,
    fold_value_biases: FoldValueBiases = False,
    process: Process = False,
    refactor_factored_attn_matrices: RefactorFactoredAttnMatrices = False,
) -> None:
    """Convert one checkpoint into a TransformerLens safetensors file."""
    check_dtype_option(dtype)
    processing = Processing.from_flags(
        process=process,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
    )
    resolved = resolve_source(
        source, revision=revision, step=step, cache_dir=cache_dir, checkpoint_index=checkpoint_index
    )
    target = output or Path(
        default_output_name(
            resolved.provenance, any(x is not None for x in (revision, step, checkpoint_index))
        )
    )
    options = ConvertOptions(
        dtype=dtype, force=force, hash_output=json_output, processing=processing
    )
    with byte_progress(f"converting {resolved.provenance.model_name}", quiet or json_output) as bar:
        result = run_conversion(resolved, target, options, on_bytes=bar)
    if json_output:
        print(json.dumps(result.to_json()))
    elif not quiet:
        print(
            f"wrote {result.output} ({result.tensors} tensors, {result.bytes / 1e6:.1f} MB, "
            f"{result.dtype}{_processed(result.processing)}) in {result.seconds:.1f} s",
            file=sys.stderr,
        )


def _processed(steps: tuple[str, ...]) -> str:
    return f", processed: {', '.join(steps)}" if steps else ""
