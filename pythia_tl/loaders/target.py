"""What ``load`` was given: a pythia-tl file, or a folder ``export`` wrote; anything else is
refused in one line that says what it is and names the command that makes a pythia-tl file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pythia_tl.errors import OutputFileError
from pythia_tl.output.metadata import (
    PROVENANCE_KEY,
    TRACE_KEY,
    ConversionRecord,
    ExportProvenance,
    OutputFile,
    check_tokenizer_record,
    parse_metadata,
    parse_provenance,
    read_output,
)
from pythia_tl.small_files import NotASmallFile, read_small_file
from pythia_tl.source.config import MAX_CONFIG_BYTES


@dataclass(frozen=True)
class ConvertedFile:
    info: OutputFile
    record: ConversionRecord


@dataclass(frozen=True)
class ExportedFolder:
    folder: Path
    provenance: ExportProvenance


def open_target(path: Path) -> ConvertedFile | ExportedFolder:
    """The file or exported folder at ``path``; OutputFileError saying what else it is."""
    if path.is_dir():
        return _exported_folder(path)
    if not path.exists():
        raise OutputFileError(f"{path}: no such file{_convert_hint(str(path))}")
    info = read_output(path)
    if TRACE_KEY in info.metadata:
        raise OutputFileError(
            f"{path}: a trace file (tensors stacked over training steps, from 'pythia-tl "
            "trace'), not a model: read it with safetensors.safe_open or pythia_tl.read_trace"
        )
    if not info.is_pythia_tl:
        hf_weights = any(name.startswith(("gpt_neox.", "embed_out.")) for name in info.tensors)
        what = "a Hugging Face checkpoint's weights" if hf_weights else "a safetensors file"
        raise OutputFileError(
            f"{path}: {what}, not a pythia-tl file (its metadata names no converter); make one "
            f"with 'pythia-tl convert {path.parent} -o FILE' (pythia_tl.convert)"
        )
    return ConvertedFile(info, checked_record(info))


def checked_record(info: OutputFile) -> ConversionRecord:
    """The file's metadata, checked before anything is built from it: every key, the tokenizer
    record, and the tensors the file holds against those ``tl_config`` implies (so that no
    size a file claims is allocated unless the file holds tensors of that size). Each error
    names the file."""
    from pythia_tl.verify.metadata import check_tensors_follow

    try:
        record = parse_metadata(info)
        check_tokenizer_record(info.tokenizer)
        check_tensors_follow(info, record)
    except OutputFileError as exc:
        if str(exc).startswith(str(info.path)):
            raise
        raise OutputFileError(f"{info.path}: ", *exc.parts) from None
    return record


def _exported_folder(folder: Path) -> ExportedFolder:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise OutputFileError(
            f"{folder}: a folder, not a pythia-tl file; give the .safetensors file 'pythia-tl "
            "convert' wrote, or a folder 'pythia-tl export' wrote"
        )
    try:
        config = json.loads(read_small_file(config_path, MAX_CONFIG_BYTES))
    except (NotASmallFile, OSError, ValueError, RecursionError):
        raise OutputFileError(f"{config_path}: not a readable config.json") from None
    if not isinstance(config, dict) or PROVENANCE_KEY not in config:
        raise OutputFileError(
            f"{folder}: a Hugging Face folder, not one pythia-tl exported (its config.json has "
            f"no {PROVENANCE_KEY!r} field); make a pythia-tl file with 'pythia-tl convert "
            f"{folder} -o FILE' (pythia_tl.convert)"
        )
    return ExportedFolder(folder, parse_provenance(config[PROVENANCE_KEY], str(config_path)))


def _convert_hint(name: str) -> str:
    """For a missing path that names a Hub model: how to make a file of it."""
    from pythia_tl.errors import UsageError
    from pythia_tl.source.names import resolve_model_name

    if "/" in name and not name.startswith("EleutherAI/"):
        return ""  # a path, most likely
    try:
        model = resolve_model_name(name)
    except UsageError:
        return ""
    return (
        f"; {name} names the Hub model {model.repo_id}: make a file of it with 'pythia-tl "
        f"convert {name} -o FILE' (pythia_tl.convert({name!r}, 'FILE')), then load the file"
    )
