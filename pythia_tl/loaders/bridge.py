"""``load``'s bridge backend: a TransformerLens 4 ``TransformerBridge`` (3.x has one too).

A pythia-tl file boots from a transformers ``GPTNeoXForCausalLM`` built in memory from it (the
table run backwards, as ``export`` does, without a folder: ``export.hf_model``); a folder
``export`` wrote boots from the folder. The bridge is booted in the file's dtype (the bridge's own
default is float32), with the tokenizer the file records, and ``cfg.checkpoint_index``,
``checkpoint_value`` and ``checkpoint_label_type`` set from the recorded revision (the bridge
resolves them only for Hub names, never for a model in memory).

A processed file is refused with the reason and the route: a bridge is booted from raw weights
and processes them itself (``enable_compatibility_mode()``), so a raw conversion booted and then
processed is the model a processed file holds.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pythia_tl.errors import DependencyError, OutputFileError, Param, SourceError
from pythia_tl.loaders.fields import checkpoint_fields
from pythia_tl.loaders.target import ConvertedFile, ExportedFolder
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES
from pythia_tl.tokenizer import find_tokenizer

if TYPE_CHECKING:
    import torch


def bridge_class() -> Any:
    """TransformerLens' ``TransformerBridge``, or DependencyError saying what to install."""
    try:
        module = importlib.import_module("transformer_lens.model_bridge")
        return module.TransformerBridge
    except (ImportError, AttributeError):
        raise DependencyError(
            "TransformerLens' TransformerBridge cannot be imported: pip install "
            '"transformer-lens>=4.3,<5" (or 3.x, which has it too)'
        ) from None


def load_bridge(
    target: ConvertedFile | ExportedFolder,
    *,
    dtype: torch.dtype | None,
    device: str | torch.device | None,
    tokenizer: Any,
) -> Any:
    """A ``TransformerBridge`` of ``target``; ``dtype`` None: the file's."""
    bridge = bridge_class()
    if isinstance(target, ExportedFolder):
        folder, provenance = target.folder, target.provenance
        record: dict[str, Any] | None = None
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            record = {"folder": str(folder)}
        elif provenance.commit:
            record = {"repo_id": provenance.source, "revision": provenance.commit}
        found = _tokenizer(tokenizer, record, folder)
        model = _booted(bridge, str(folder), None, found, dtype or _folder_dtype(folder), device)
        fields = checkpoint_fields(provenance.source, provenance.revision)
    else:
        from pythia_tl.export.hf_model import gpt_neox_model

        info, record_ = target.info, target.record
        if record_.processing.passes:
            raise OutputFileError(
                f"{info.path}: processed ({', '.join(record_.processing.passes)}); a "
                "TransformerBridge boots raw weights and processes them itself: load a raw "
                "conversion with ",
                Param("backend", "bridge"),
                " and call enable_compatibility_mode() on it (the same processing), or load "
                "this file with ",
                Param("backend", "hooked"),
                " (TransformerLens 3)",
            )
        chosen = dtype or record_.dtype.torch
        found = _tokenizer(tokenizer, info.tokenizer, info.path)
        hf_model = gpt_neox_model(info, record_, chosen)
        name = record_.source if not record_.from_folder else str(info.path)
        model = _booted(bridge, name, hf_model, found, chosen, device)
        fields = checkpoint_fields(record_.source, record_.revision)
    for key in ("checkpoint_index", "checkpoint_value", "checkpoint_label_type"):
        setattr(model.cfg, key, fields.get(key))
    model.eval()
    return model


def _tokenizer(choice: Any, record: dict[str, Any] | None, where: Path) -> Any:
    found = find_tokenizer(choice, record, where)
    if found is None:
        # boot_transformers always makes a tokenizer, fetching its model name's from the Hub.
        raise SourceError(
            f"{where}: a TransformerBridge needs a tokenizer, and none was found; pass ",
            Param("tokenizer"),
            " a Hub name, a folder or a tokenizer object",
        )
    return found


def _booted(
    bridge: Any,
    name: str,
    hf_model: Any,
    tokenizer: Any,
    dtype: torch.dtype,
    device: str | torch.device | None,
) -> Any:
    kwargs: dict[str, Any] = {"dtype": dtype, "tokenizer": tokenizer}
    if hf_model is not None:
        kwargs["hf_model"] = hf_model
    if device is not None:
        kwargs["device"] = device
    return bridge.boot_transformers(name, **kwargs)


def _folder_dtype(folder: Path) -> torch.dtype:
    """The dtype an exported folder's config.json records (export writes ``torch_dtype``)."""
    import json

    from pythia_tl.dtypes import BY_NAME, OUTPUT_DTYPE_NAMES

    config = json.loads((folder / "config.json").read_text())
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    if name not in OUTPUT_DTYPE_NAMES:
        raise OutputFileError(f"{folder}/config.json: dtype {name!r} is not a float dtype")
    return BY_NAME[name].torch
