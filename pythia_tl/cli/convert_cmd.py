"""``pythia-tl convert``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pythia_tl.cli.options import CacheDir, DType, Json, Quiet, Revision, Step
from pythia_tl.cli.progress import byte_progress
from pythia_tl.convert import ConvertOptions, default_output_name
from pythia_tl.convert import convert as run_conversion
from pythia_tl.plan import check_dtype_option
from pythia_tl.source import resolve_source


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
    dtype: DType = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Convert one checkpoint into a TransformerLens safetensors file."""
    check_dtype_option(dtype)
    resolved = resolve_source(source, revision=revision, step=step, cache_dir=cache_dir)
    target = output or Path(
        default_output_name(resolved.provenance, revision is not None or step is not None)
    )
    options = ConvertOptions(dtype=dtype, force=force, hash_output=json_output)
    with byte_progress(f"converting {resolved.provenance.model_name}", quiet or json_output) as bar:
        result = run_conversion(resolved, target, options, on_bytes=bar)
    if json_output:
        print(json.dumps(result.to_json()))
    elif not quiet:
        print(
            f"wrote {result.output} ({result.tensors} tensors, {result.bytes / 1e6:.1f} MB, "
            f"{result.dtype}) in {result.seconds:.1f} s",
            file=sys.stderr,
        )
