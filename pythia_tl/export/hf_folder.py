"""A TransformerLens file as a Hugging Face GPT-NeoX folder, by running the table backwards.

The folder holds ``config.json`` (the source's fields, in the Hub's spelling), ``model.safetensors``
(every source tensor rebuilt by ``Rule.invert``: for a raw file, bit for bit the source's) and the
tokenizer files when the file records where they are. transformers' ``GPTNeoXForCausalLM`` and
TransformerLens 4's ``TransformerBridge.boot_transformers`` load such a folder offline.

The tensors stream through one at a time (memory: about one tensor), and the folder appears whole
or not at all: it is written under a temporary name beside the target, then renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythia_tl.errors import OutputError, OutputFileError, Param
from pythia_tl.loaders.target import checked_record
from pythia_tl.output.atomic import fsync_folder, temp_path_for
from pythia_tl.output.metadata import (
    PROVENANCE_KEY,
    ConversionRecord,
    OutputFile,
    export_provenance,
    read_output,
)
from pythia_tl.small_files import NotASmallFile, read_small_file
from pythia_tl.source.config import NeoXConfig
from pythia_tl.source.tokenizer_files import MAX_TOKENIZER_FILE_BYTES, TOKENIZER_FILES

WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    tensors: int
    bytes: int
    tokenizer_files: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "output": str(self.folder),
            "tensors": self.tensors,
            "bytes": self.bytes,
            "tokenizer_files": list(self.tokenizer_files),
        }


def neox_config_json(config: NeoXConfig, dtype: str) -> dict[str, Any]:
    """``config.json`` of a Pythia model with these sizes, spelled as the Hub's Pythia configs."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": config.d_model,
        "intermediate_size": config.d_mlp,
        "num_attention_heads": config.n_heads,
        "num_hidden_layers": config.n_layers,
        "max_position_embeddings": config.n_ctx,
        "vocab_size": config.d_vocab,
        "layer_norm_eps": config.eps,
        "hidden_act": config.act_fn,
        "rotary_pct": config.rotary_pct,
        "rotary_emb_base": config.rotary_base,
        "use_parallel_residual": config.parallel_residual,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def provenance_field(info: OutputFile, record: ConversionRecord) -> dict[str, Any]:
    """``config.json``'s field of ours: where the weights came from (``export_provenance``)."""
    return {PROVENANCE_KEY: export_provenance(info, record)}


def export_hf_folder(
    path: str | Path,
    folder: str | Path,
    *,
    overwrite: bool = False,
    on_bytes: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write the raw, whole pythia-tl file at ``path`` as a GPT-NeoX folder at ``folder``."""
    path, folder = Path(path), Path(folder)
    info = read_output(path)
    record = checked_record(info)
    _check_exportable(info, record)
    _check_target(folder, overwrite)
    temp = temp_path_for(folder)
    try:
        temp.mkdir()
        size, count = _write_weights(info, record, temp / WEIGHTS_NAME, on_bytes)
        dtype = info.metadata["dtype"]
        fields = {**neox_config_json(record.config, dtype), **provenance_field(info, record)}
        config = json.dumps(fields, indent=2) + "\n"
        _write_durably(temp / "config.json", config.encode())
        copied = _copy_tokenizer(info.tokenizer, temp)
        fsync_folder(temp)
        _publish_folder(temp, folder, overwrite)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return ExportResult(folder, count, size, copied)


def _check_exportable(info: OutputFile, record: ConversionRecord) -> None:
    if not record.selection.is_all:
        raise OutputFileError(
            f"{info.path}: a partial file (it holds only some tensors); a GPT-NeoX folder needs "
            "every weight: export a whole conversion"
        )
    passes = record.processing.passes
    if passes:
        raise OutputFileError(
            f"{info.path}: processed ({', '.join(passes)}); GPT-NeoX cannot hold processed "
            "weights (a folded final LayerNorm leaves an unembedding bias, and folded block "
            "LayerNorms leave none to hold their weights): export a raw conversion"
        )


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise OutputError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputError(
            f"{folder}: exists and is not empty; pass ",
            Param("overwrite", True),
            " to replace it",
        )
    if not folder.parent.is_dir():
        raise OutputError(f"{folder.parent}: no such folder")


def _write_weights(
    info: OutputFile,
    record: ConversionRecord,
    target: Path,
    on_bytes: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """The source tensors, rebuilt one at a time into ``target``; returns (bytes, tensors)."""
    from pythia_tl.export.rebuild import RebuiltSource
    from pythia_tl.output.writer import write_safetensors

    rebuilt = RebuiltSource(info, record)
    metadata = {"format": "pt", PROVENANCE_KEY: json.dumps(export_provenance(info, record))}
    size = write_safetensors(
        target, rebuilt.entries, rebuilt.tensors(), lambda: metadata, metadata, on_bytes=on_bytes
    )
    return size, len(rebuilt.entries)


def _copy_tokenizer(record: dict[str, Any] | None, folder: Path) -> tuple[str, ...]:
    """Copy the tokenizer files the record points to (those that can be found) into ``folder``."""
    if record is None:
        return ()
    found: dict[str, Path] = {}
    if "folder" in record:
        source = Path(str(record["folder"]))
        found = {name: source / name for name in TOKENIZER_FILES if (source / name).is_file()}
    elif "repo_id" in record:
        from huggingface_hub import try_to_load_from_cache

        for name in TOKENIZER_FILES:
            cached = try_to_load_from_cache(
                str(record["repo_id"]), name, revision=str(record.get("revision") or "main")
            )
            if isinstance(cached, str):
                found[name] = Path(cached)
    for name, source_path in found.items():
        try:
            data = read_small_file(source_path, MAX_TOKENIZER_FILE_BYTES)
        except (NotASmallFile, OSError) as exc:
            raise OutputFileError(
                f"{source_path}: cannot copy it as a tokenizer file ({exc})"
            ) from None
        _write_durably(folder / name, data)
    return tuple(found)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _publish_folder(temp: Path, folder: Path, overwrite: bool) -> None:
    """Rename the finished ``temp`` to ``folder``; an existing folder (replaced only with
    ``overwrite``, or when empty) is moved aside first and removed after."""
    old: Path | None = None
    if folder.is_dir():
        if any(folder.iterdir()) and not overwrite:
            raise OutputError(
                f"{folder}: exists and is not empty; pass ",
                Param("overwrite", True),
                " to replace it",
            )
        old = temp_path_for(folder)
        folder.rename(old)
    try:
        temp.rename(folder)
    except OSError as exc:
        if old is not None:
            with contextlib.suppress(OSError):
                old.rename(folder)
        raise OutputError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    fsync_folder(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
