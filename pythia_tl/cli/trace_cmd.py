"""``pythia-tl trace``: some keys of a model across steps, stacked into one file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.filesize import decimal

from pythia_tl.cli.batch_cmd import _LineReporter
from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import (
    AllowNonfinite,
    CacheDir,
    Json,
    KeepDownloads,
    OutputChoice,
    Quiet,
    with_output_options,
)
from pythia_tl.errors import Param, UsageError
from pythia_tl.text import printable


@with_output_options
def trace(
    model: Annotated[
        str, typer.Argument(help="A Hub repo id (EleutherAI/pythia-70m) or a short name.")
    ],
    steps: Annotated[
        str,
        typer.Option(
            "--steps",
            metavar="SPEC",
            help="'all', or a comma list of steps and inclusive ranges FIRST-LAST[:STRIDE], "
            "as batch takes.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The safetensors file to write.")],
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Steps converted at once (at least 1).")
    ] = 1,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    keep_parts: Annotated[
        bool,
        typer.Option("--keep-parts", help="Keep the per-step files (OUTPUT.parts/) afterwards."),
    ] = False,
    allow_nonfinite: AllowNonfinite = False,
    cache_dir: CacheDir = None,
    keep_downloads: KeepDownloads = False,
    quiet: Quiet = False,
    json_output: Json = False,
    *,
    choice: OutputChoice,
) -> None:
    """Write some TransformerLens keys (--tensors) of a model across training steps into one
    safetensors file: each key stacked over the steps (axis 0), the steps and commits in its
    metadata. Only the bytes those keys need are fetched; rerun after an interruption, it
    converts only the steps not yet done (they wait in OUTPUT.parts/)."""
    from pythia_tl.api.trace import trace_with
    from pythia_tl.engine.options import ConvertOptions

    if choice.selection.is_all:
        raise UsageError(
            Param("tensors"), " is required: the keys to trace, e.g. 'blocks.*.attn.W_Q'"
        )
    options = ConvertOptions(
        dtype=choice.dtype,
        processing=choice.processing,
        selection=choice.selection,
        allow_nonfinite=allow_nonfinite,
    )
    with _LineReporter(quiet or json_output) as reporter:
        result = trace_with(
            model,
            output,
            options,
            steps,
            overwrite=force,
            jobs=jobs,
            cache_dir=cache_dir,
            keep_downloads=keep_downloads,
            keep_parts=keep_parts,
            reporter=reporter,
        )
    if json_output:
        print_json(result.to_json())
    elif not quiet:
        made = ", ".join(f"{n} {status}" for status, n in result.parts.items() if n)
        print(
            printable(
                f"wrote {result.output} ({result.tensors} tensors over {len(result.steps)} "
                f"steps, {decimal(result.bytes)}; steps {made})"
            ),
            file=sys.stderr,
        )
