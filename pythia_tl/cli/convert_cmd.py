"""``pythia-tl convert``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pythia_tl.cli.clock import seconds_since_start
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
from pythia_tl.output.atomic import check_target
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
    from pythia_tl.engine.convert import ConvertOptions, default_output_name
    from pythia_tl.engine.convert import convert as run_conversion
    from pythia_tl.source import resolve_source

    given = None if output is None else Path(output)
    into_folder = output is not None and (output.endswith(os.sep) or Path(output).is_dir())
    if given is not None and not into_folder:
        check_target(given, force)  # before anything is downloaded or converted
    resolved = resolve_source(
        source,
        revision=revision,
        step=step,
        cache_dir=cache_dir,
        checkpoint_index=checkpoint_index,
        download=keep_downloads,
    )
    name = default_output_name(
        resolved.provenance, any(x is not None for x in (revision, step, checkpoint_index))
    )
    if given is None or into_folder:
        folder = given or Path()
        folder.mkdir(parents=True, exist_ok=True)
        given = folder / name
        check_target(given, force)
    options = ConvertOptions(
        dtype=choice.dtype,
        overwrite=force,
        hash_output=json_output,
        processing=choice.processing,
        selection=choice.selection,
        allow_nonfinite=allow_nonfinite,
    )
    label = printable(f"converting {resolved.provenance.model_name}")
    with byte_progress(label, quiet or json_output) as bar:
        result = run_conversion(resolved, given, options, on_bytes=bar)
    if json_output:
        print_json(result.to_json())
    elif not quiet:
        print(
            printable(
                f"wrote {result.output} ({result.tensors} tensors, {result.bytes / 1e6:.1f} MB, "
                f"{result.dtype}{_processed(result.processing)}) in {seconds_since_start():.1f} s"
            ),
            file=sys.stderr,
        )


def _processed(passes: tuple[str, ...]) -> str:
    return f", processed: {', '.join(passes)}" if passes else ""
