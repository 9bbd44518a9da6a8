"""``pythia_tl.load``: a converted file as a ready TransformerLens model.

``backend="hooked"`` (the default with TransformerLens 3) gives a ``HookedTransformer``, built
here; ``backend="bridge"`` (the default with TransformerLens 4, which removed
``HookedTransformer``) gives a ``TransformerBridge`` (``pythia_tl.loaders.bridge``). What is
loaded is checked first (``pythia_tl.loaders.target``): anything but a pythia-tl file or a
folder ``export`` wrote is refused, naming the command that makes a pythia-tl file.

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
from typing import TYPE_CHECKING, Any, Literal

from pythia_tl.dtypes import BY_NAME
from pythia_tl.errors import DependencyError, OutputFileError, Param, UsageError
from pythia_tl.loaders.fields import checkpoint_fields
from pythia_tl.loaders.target import ConvertedFile, open_target
from pythia_tl.mapping.plan import check_dtype
from pythia_tl.mapping.selection import Selection
from pythia_tl.output.metadata import OutputFile
from pythia_tl.tokenizer import NoTokenizerWarning, find_tokenizer

if TYPE_CHECKING:
    import torch

__all__ = ["NoTokenizerWarning", "load"]

# Buffers a HookedTransformer makes for itself (attention masks, rotary tables); a converted file
# holds none of them, and their shapes differ between TransformerLens versions.
_OWN_BUFFERS = ("attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos")

Backend = Literal["auto", "hooked", "bridge"]
BACKENDS = ("auto", "hooked", "bridge")


def load(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: Any = "auto",
    strict: bool = True,
    backend: Backend = "auto",
) -> Any:
    """The converted file at ``path`` as a TransformerLens model.

    ``backend``: "hooked" (a ``HookedTransformer``, TransformerLens 3), "bridge" (a
    ``TransformerBridge`` booted from a transformers model built in memory from the file,
    TransformerLens 4 or 3), or "auto": "hooked" where TransformerLens has it, else "bridge".
    ``path`` may also be a folder ``export`` wrote (bridge only). ``dtype``: the model's dtype
    (default, or "auto": the file's). ``device``: where the model lives (default:
    TransformerLens' choice). ``tokenizer``: "auto" (the one the file records, if it can be
    found; offline, from the cache), a Hub name or a folder, a tokenizer object, or None (hooked
    only: a bridge always has one). ``strict=False`` also loads a partial file (hooked only; the
    missing weights keep their initial values). A processed file loads as the "LNPre" model it
    was processed for (hooked); the bridge refuses it with the reason and the route.
    ``cfg.checkpoint_index``/``checkpoint_value`` are set when the file was converted from a
    step branch.
    """
    if backend not in BACKENDS:
        raise UsageError(Param("backend"), f" {backend!r}: expected auto, hooked or bridge")
    path = Path(path)
    target = open_target(path)
    if backend == "auto":
        backend = "hooked" if _has_hooked_transformer() else "bridge"
    if backend == "bridge":
        from pythia_tl.loaders.bridge import load_bridge

        if isinstance(target, ConvertedFile) and not target.record.selection.is_all:
            raise OutputFileError(
                f"{path}: a partial file (it holds only {_describe(target.record.selection)}); "
                "a TransformerBridge needs every weight: load it with ",
                Param("backend", "hooked"),
                " and ",
                Param("strict", False),
            )
        chosen = None
        if dtype is not None and dtype != "auto":
            record_dtype = target.record.dtype.torch if isinstance(target, ConvertedFile) else None
            chosen = _torch_dtype(dtype, record_dtype)
        return load_bridge(target, dtype=chosen, device=device, tokenizer=tokenizer)
    hooked_transformer, config_class = _transformer_lens()
    if not isinstance(target, ConvertedFile):
        raise OutputFileError(
            f"{path}: a folder 'pythia-tl export' wrote; load it with ",
            Param("backend", "bridge"),
            ", or load the file it was exported from",
        )
    info, record = target.info, target.record
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
    cfg.update(checkpoint_fields(record.source, record.revision))
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
        raise DependencyError(
            f"TransformerLens {_installed_version()} has no HookedTransformer (removed in 4.0): "
            "load with ",
            Param("backend", "bridge"),
            " (a TransformerBridge), or install 'transformer-lens<4' (pip install "
            "\"pythia-tl[tl]\") for the HookedTransformer; 'pythia-tl export' writes a Hugging "
            "Face folder for anything else",
        ) from None


def _has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens has ``HookedTransformer`` (2.x, 3.x); none
    installed counts as having it, so that the hooked backend says what to install."""
    try:
        transformer_lens = importlib.import_module("transformer_lens")
    except ImportError:
        return True  # missing or broken: the hooked backend says so
    try:
        return hasattr(transformer_lens, "HookedTransformer")
    except ImportError:  # 4.x's module __getattr__ raises one with a migration note
        return False


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "4.x"


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


def _torch_dtype(dtype: str | torch.dtype, record_dtype: torch.dtype | None) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    check_dtype(dtype)
    if dtype == "auto":
        assert record_dtype is not None
        return record_dtype
    return BY_NAME[dtype].torch
