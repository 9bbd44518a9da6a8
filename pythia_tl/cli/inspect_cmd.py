"""``pythia-tl inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pythia_tl.cli.cells import cell
from pythia_tl.cli.options import Json
from pythia_tl.output.metadata import read_output


def inspect(
    file: Annotated[Path, typer.Argument(help="A safetensors file written by pythia-tl.")],
    config: Annotated[
        bool, typer.Option("--config", help="Print only the TransformerLens config JSON.")
    ] = False,
    json_output: Json = False,
) -> None:
    """List a converted file's tensors and metadata."""
    info = read_output(file)
    if config:
        print(json.dumps(info.tl_config, indent=2))
        return
    if json_output:
        print(json.dumps(info.to_json()))
        return
    console = Console()
    meta = Table(title=cell(str(file)), show_header=False)
    for key, value in info.metadata.items():
        if key == "tl_config":
            value = f"normalization_type {info.tl_config.get('normalization_type')} (see --config)"
        elif key == "processing":
            value = ", ".join(info.processing) or "none (raw weights)"
        meta.add_row(cell(key), cell(value))
    console.print(meta)
    tensors = Table()
    for column in ("tensor", "shape", "dtype"):
        tensors.add_column(column)
    for name, (dtype, shape) in info.tensors.items():
        tensors.add_row(cell(name), cell(str(shape)), cell(dtype))
    console.print(tensors)
    console.print(f"{len(info.tensors)} tensors, {info.size / 1e6:.1f} MB")
