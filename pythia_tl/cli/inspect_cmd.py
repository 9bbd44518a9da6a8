"""``pythia-tl inspect``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import Json
from pythia_tl.cli.tables import print_table, tl_key_order
from pythia_tl.dtypes import dtype_name
from pythia_tl.output.metadata import JSON_KEYS, OPTIONAL_KEYS, REQUIRED_KEYS, read_output
from pythia_tl.text import printable

# Metadata in a fixed order: the schema's keys as it lists them, then any others by name.
_SCHEMA_ORDER = {key: i for i, key in enumerate((*REQUIRED_KEYS, *OPTIONAL_KEYS))}


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
    keys = sorted(info.metadata, key=lambda key: (_SCHEMA_ORDER.get(key, len(_SCHEMA_ORDER)), key))
    names = sorted(info.tensors, key=tl_key_order)
    if json_output:
        described = info.to_json()
        metadata: dict[str, Any] = described["metadata"]
        described["metadata"] = {key: metadata[key] for key in keys}
        described["tensors"] = {name: described["tensors"][name] for name in names}
        described["written_by_pythia_tl"] = info.is_pythia_tl
        print_json(described)
        return
    console = Console()
    if not info.is_pythia_tl:
        print(
            printable(
                f"{file}: not written by pythia-tl (its metadata has no converter 'pythia-tl'); "
                "its tensors and metadata as stored:"
            ),
            file=sys.stderr,
        )
    rows = []
    for key in keys:
        value = info.metadata[key]
        if key == "tl_config" and info.is_pythia_tl:
            value = f"normalization_type {info.tl_config.get('normalization_type')} (see --config)"
        elif key == "processing" and info.is_pythia_tl:
            value = ", ".join(info.processing) or "none (raw weights)"
        elif key in JSON_KEYS and not console.is_terminal:
            value = " ".join(value.split())
        rows.append([key, value])
    if rows:
        print_table(console, None, rows, title=str(file))
    tensor_rows = [
        [name, str(info.tensors[name][1]), dtype_name(info.tensors[name][0])] for name in names
    ]
    print_table(console, ["tensor", "shape", "dtype"], tensor_rows)
    print(f"{len(info.tensors)} tensors, {info.size / 1e6:.1f} MB")
