"""``pythia_tl.load``: a converted file as a ready TransformerLens ``HookedTransformer``.

The model is built from the file's own ``tl_config`` (so a processed file gives the "LNPre" model
it was processed for, and is not processed again), its weights are copied in tensor by tensor
(memory: the model plus one tensor), and its tokenizer is found from the file's record of it.
TransformerLens 2.x and 3.x have ``HookedTransformer``; 4.x removed it. 2.x needs transformers
4.x, which cannot share an environment with pythia-tl's huggingface_hub 1.x: 3.x is the one to use.

The module is not called ``load``: importing it would replace the package attribute
``pythia_tl.load`` (the function) with the module.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pythia_tl.dtypes import BY_NAME
from pythia_tl.errors import DependencyError, OutputFileError, Param
from pythia_tl.mapping.plan import check_dtype
from pythia_tl.mapping.selection import Selection
from pythia_tl.output.metadata import OutputFile, parse_metadata, read_output
from pythia_tl.source.names import resolve_model_name
from pythia_tl.source.schedule import STEP_BRANCH, checkpoint_schedule
from pythia_tl.tokenizer import NoTokenizerWarning, find_tokenizer

if TYPE_CHECKING:
    import torch

__all__ = ["NoTokenizerWarning", "load"]

# Buffers a HookedTransformer makes for itself (attention masks, rotary tables); a converted file
# holds none of them, and their shapes differ between TransformerLens versions.
_OWN_BUFFERS = ("attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos")

TL4_ROUTES = (
    "TransformerLens {version} has no HookedTransformer (removed in 4.0): install "
    "'transformer-lens<4' (pip install \"pythia-tl[tl]\"), or write a Hugging Face folder with "
    "'pythia-tl export' (pythia_tl.export.export_hf_folder) and load it with "
    "TransformerBridge.boot_transformers"
)


def load(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: Any = "auto",
    strict: bool = True,
) -> Any:
    """A ``HookedTransformer`` holding the converted file at ``path``.

    ``dtype``: the model's dtype (default, or "auto": the file's). ``device``: where the model lives
    (default: TransformerLens' choice). ``tokenizer``: "auto" (the one the file records, if it
    can be found; offline, from the cache), a Hub name or a folder, a tokenizer object, or None.
    ``strict=False`` also loads a partial file (the missing weights keep their initial values).
    """
    hooked_transformer, config_class = _transformer_lens()
    path = Path(path)
    info = read_output(path)
    record = parse_metadata(info)
    selection = record.selection
    if not selection.is_all and strict:
        raise OutputFileError(
            f"{path}: a partial file (it holds only {_describe(selection)}); pass ",
            Param("strict", False),
            " to load it with the other weights left at their initial values",
        )
    cfg = dict(record.tl_config)
    cfg["dtype"] = _torch_dtype(dtype or "auto", record.dtype.torch)
    if device is not None:
        cfg["device"] = str(device)
    cfg.update(_checkpoint_fields(record.source, record.revision))
    found = find_tokenizer(tokenizer, info.tokenizer, path)
    # Given no tokenizer, TransformerLens would fetch cfg.tokenizer_name from the Hub (and wait
    # on it offline): the name is left out while building, and restored after.
    model = hooked_transformer(
        config_class(**{**cfg, "tokenizer_name": None}), tokenizer=found, move_to_device=True
    )
    model.cfg.tokenizer_name = cfg["tokenizer_name"]
    _load_weights(model, info, strict=strict)
    model.eval()
    return model


def _transformer_lens() -> tuple[Any, Any]:
    """TransformerLens' HookedTransformer and its config class, or one line saying what to do."""
    try:
        transformer_lens = importlib.import_module("transformer_lens")
    except ImportError as exc:
        if importlib.util.find_spec("transformer_lens") is not None:  # there, but broken
            raise DependencyError(
                f"TransformerLens cannot be imported ({' '.join(str(exc).split())})"
            ) from None
        raise DependencyError(
            'TransformerLens is not installed: pip install "pythia-tl[tl]" (TransformerLens 3.x)'
        ) from None
    try:
        return transformer_lens.HookedTransformer, transformer_lens.HookedTransformerConfig
    except (ImportError, AttributeError):
        raise DependencyError(TL4_ROUTES.format(version=_installed_version())) from None


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "4.x"


def _checkpoint_fields(source: str, revision: str) -> dict[str, Any]:
    """``checkpoint_index`` and ``checkpoint_value`` when the file was converted from a step
    branch of a model whose schedule is known."""
    match = STEP_BRANCH.fullmatch(revision)
    if match is None or Path(source).is_absolute():
        return {}
    step = int(match[1])
    fields: dict[str, Any] = {"checkpoint_value": step, "checkpoint_label_type": "step"}
    model = resolve_model_name(source)
    if model.has_known_schedule:
        steps = checkpoint_schedule(model).steps
        if step in steps:
            fields["checkpoint_index"] = steps.index(step)
    return fields


def _load_weights(model: Any, info: OutputFile, *, strict: bool) -> None:
    """Copy the file's tensors into the model's parameters one at a time, refusing any key the
    model lacks and (when ``strict``) any weight the file lacks."""
    import torch

    from pythia_tl.output.file_tensors import read_tensor

    wanted = model.state_dict()
    own = {key for key in wanted if key.endswith(_OWN_BUFFERS)}
    unexpected = sorted(set(info.tensors) - set(wanted))
    missing = sorted(set(wanted) - own - set(info.tensors))
    if unexpected:
        raise OutputFileError(
            f"{info.path}: tensors the model does not have: {_keys(unexpected)}; is the file's "
            "tl_config the one it was written with?"
        )
    if missing and strict:
        raise OutputFileError(f"{info.path}: weights missing from the file: {_keys(missing)}")
    with torch.no_grad():
        for key in info.tensors:  # one at a time, by byte range (see output.file_tensors)
            target = wanted[key]
            tensor = read_tensor(info.path, key)
            if tuple(tensor.shape) != tuple(target.shape):
                raise OutputFileError(
                    f"{info.path}: tensor {key} has shape {list(tensor.shape)}, the model "
                    f"expects {list(target.shape)}"
                )
            target.copy_(tensor)


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")


def _describe(selection: Selection) -> str:
    recorded = selection.to_json() or {}
    parts = [f"{key} {value}" for key, value in sorted(recorded.items()) if value]
    return "; ".join(parts) or "a selection of tensors"


def _torch_dtype(dtype: str | torch.dtype, record_dtype: torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    check_dtype(dtype)
    return record_dtype if dtype == "auto" else BY_NAME[dtype].torch
