"""``pythia-tl convert``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import (
    AllowNonfinite,
    CacheDir,
    CheckpointIndex,
    Json,
    KeepDownloads,
    OutputChoice,
    Quiet,
    Revision,
    Step,
    with_output_options,
)
from pythia_tl.cli.progress import byte_progress
from pythia_tl.text import printable


@with_output_options
def convert(
    source: Annotated[
        str,
        typer.Argument(
            help="A local folder, a Hub repo id (EleutherAI/pythia-70m) or a short name."
        ),
    ],
    output: Annotated[
        Optional[str],  # noqa: UP045 (a str: Path would drop the trailing "/" of a folder)
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Output file, or a folder to write the default name in (default: "
            "<model-name>[-<revision>].safetensors here).",
        ),
    ] = None,
    revision: Revision = None,
    step: Step = None,
    checkpoint_index: CheckpointIndex = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    allow_nonfinite: AllowNonfinite = False,
    cache_dir: CacheDir = None,
    keep_downloads: KeepDownloads = False,
    quiet: Quiet = False,
    json_output: Json = False,
    *,
    choice: OutputChoice,
) -> None:
    """Convert one checkpoint into a TransformerLens safetensors file.

    A Hub revision not in the cache is streamed: converted while its bytes arrive, and not
    stored (unless --keep-downloads)."""
    from pythia_tl.api.convert import convert_with
    from pythia_tl.engine.options import ConvertOptions

    options = ConvertOptions(
        dtype=choice.dtype,
        overwrite=force,
        hash_output=json_output,
        processing=choice.processing,
        selection=choice.selection,
        allow_nonfinite=allow_nonfinite,
    )
    label = printable(f"converting {_model_label(source)}")
    with byte_progress(label, quiet or json_output) as bar:
        result = convert_with(
            source,
            output,
            options,
            step=step,
            revision=revision,
            checkpoint_index=checkpoint_index,
            cache_dir=cache_dir,
            keep_downloads=keep_downloads,
            on_bytes=bar,
        )
    if json_output:
        print_json(result.to_json())
    elif not quiet:
        print(
            printable(
                f"wrote {result.output} ({result.tensors} tensors, {result.bytes / 1e6:.1f} MB, "
                f"{result.dtype}{_processed(result.processing)}) in {result.seconds:.1f} s"
            ),
            file=sys.stderr,
        )


def _model_label(source: str) -> str:
    """The model's name for the progress bar: a folder's or a repository's last part."""
    return Path(source).name or source


def _processed(passes: tuple[str, ...]) -> str:
    return f", processed: {', '.join(passes)}" if passes else ""
