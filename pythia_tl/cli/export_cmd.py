"""``pythia-tl export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import Json, Quiet
from pythia_tl.cli.progress import byte_progress
from pythia_tl.text import printable


def export(
    file: Annotated[Path, typer.Argument(help="A raw (unprocessed) file written by pythia-tl.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The Hugging Face folder to write (config.json, model.safetensors, tokenizer).",
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing non-empty folder.")
    ] = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Write a converted file back as a Hugging Face GPT-NeoX folder, which transformers and
    TransformerLens 4 (TransformerBridge.boot_transformers) load."""
    from pythia_tl.export import export_hf_folder

    with byte_progress(f"exporting {printable(file.name)}", quiet or json_output) as bar:
        result = export_hf_folder(file, output, overwrite=force, on_bytes=bar)
    if json_output:
        print_json(result.to_json())
    elif not quiet:
        tokenizer = (
            f", tokenizer: {', '.join(result.tokenizer_files)}"
            if result.tokenizer_files
            else ", no tokenizer files (none recorded or cached)"
        )
        print(
            f"wrote {printable(str(result.folder))} ({result.tensors} tensors, "
            f"{result.bytes / 1e6:.1f} MB{tokenizer})",
            file=sys.stderr,
        )
