"""Is the metadata complete, and do the file's tensors follow from it?

Every key pythia-tl writes must be present and well formed. ``tl_config`` must be exactly what
pythia-tl writes for the sizes it states (so no field is missing, extra or inconsistent, e.g.
``d_head * n_heads != d_model``), and the tensors must be exactly those the Pythia table and the
recorded processing steps produce for those sizes: same keys, shapes and dtype.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pythia_tl import CONVERTER_NAME
from pythia_tl.converters.pythia import PYTHIA_TO_TL
from pythia_tl.converters.rules import eval_shape, expand
from pythia_tl.converters.tl_config import tl_config
from pythia_tl.errors import OutputFileError, PythiaTLError
from pythia_tl.output_file import OutputInfo
from pythia_tl.plan import DTYPES, Plan, PlannedTensor, dtype_name
from pythia_tl.processing import TL_ORDER, Processing, plan_processing
from pythia_tl.source.config import NeoXConfig
from pythia_tl.verify.report import Check
from pythia_tl.writer import SAFETENSORS_DTYPE_NAMES

REQUIRED_KEYS = (
    "format",
    "tl_config",
    "source",
    "revision",
    "commit",
    "source_files",
    "converter",
    "converter_version",
    "dtype",
    "processing",
)
_POSITIVE_INTS = ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Recorded:
    """The metadata of a verified file, parsed."""

    tl_config: dict[str, Any]
    config: NeoXConfig
    dtype: torch.dtype
    source: str
    revision: str
    commit: str
    source_files: dict[str, str]
    processing: Processing

    @property
    def from_folder(self) -> bool:
        """Whether the source was a local folder (recorded as an absolute path)."""
        return Path(self.source).is_absolute()


def check_metadata(info: OutputInfo) -> tuple[Check, Recorded | None]:
    """The check's result, and the parsed metadata when it is complete and consistent."""
    try:
        recorded = parse_metadata(info)
        if recorded.config.n_layers > len(info.tensors):
            # Refused before the table is expanded layer by layer.
            raise OutputFileError(
                f"metadata tl_config n_layers is {recorded.config.n_layers}, but the file "
                f"holds only {len(info.tensors)} tensors"
            )
        expected = expected_tensors(recorded)
        _check_tensors(info, recorded, expected)
    except PythiaTLError as exc:
        return Check.failed("metadata", str(exc)), None
    steps = ", ".join(recorded.processing.steps) or "none"
    detail = (
        f"complete; tl_config consistent; {len(expected)} tensors with the keys, shapes and "
        f"dtype ({dtype_name(recorded.dtype)}) it implies; processing: {steps}"
    )
    return Check.ok("metadata", detail), recorded


def parse_metadata(info: OutputInfo) -> Recorded:
    """The metadata, checked key by key; OutputFileError names the first key at fault."""
    meta = info.metadata
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise OutputFileError(f"metadata lacks {', '.join(repr(k) for k in missing)}")
    _expect(meta["format"] == "pt", "format", meta["format"], "'pt'")
    _expect(meta["converter"] == CONVERTER_NAME, "converter", meta["converter"], CONVERTER_NAME)
    _expect(bool(meta["converter_version"]), "converter_version", "", "a version")
    _expect(meta["dtype"] in DTYPES, "dtype", meta["dtype"], f"one of {', '.join(DTYPES)}")
    source, revision, commit = meta["source"], meta["revision"], meta["commit"]
    _expect(bool(source), "source", source, "a Hub repo id or a folder")
    if Path(source).is_absolute():
        _expect(commit == "" and revision == "", "commit", commit, "empty for a folder source")
    else:
        _expect(bool(_COMMIT.fullmatch(commit)), "commit", commit, "40 hex digits")
        _expect(bool(revision), "revision", revision, "the revision converted")
    processing = _processing(info.processing)
    cfg = info.tl_config
    config = _config_from_tl(cfg)
    rederived = tl_config(
        config, cfg.get("model_name"), cfg.get("tokenizer_name"), processing.normalization_type
    )
    for key in sorted(rederived.keys() | cfg.keys()):
        if key not in cfg:
            raise OutputFileError(f"metadata tl_config lacks {key!r}")
        if key not in rederived:
            raise OutputFileError(f"metadata tl_config has an unexpected field {key!r}")
        _expect(cfg[key] == rederived[key], f"tl_config {key}", cfg[key], repr(rederived[key]))
    _expect(isinstance(cfg["model_name"], str), "tl_config model_name", cfg["model_name"], "text")
    tokenizer = cfg["tokenizer_name"]
    _expect(
        tokenizer is None or isinstance(tokenizer, str),
        "tl_config tokenizer_name",
        tokenizer,
        "text or null",
    )
    return Recorded(
        tl_config=cfg,
        config=config,
        dtype=DTYPES[meta["dtype"]],
        source=source,
        revision=revision,
        commit=commit,
        source_files=_source_files(info.source_files),
        processing=processing,
    )


def expected_tensors(recorded: Recorded) -> dict[str, tuple[int, ...]]:
    """The keys and shapes the Pythia table and the processing steps give for the recorded
    sizes, in the order pythia-tl writes them."""
    config = recorded.config
    dims = config.dims()
    planned = tuple(
        PlannedTensor(
            key=rule.target,
            source=rule.source,
            steps=rule.steps,
            source_shape=eval_shape(rule.source_shape, dims),
            shape=eval_shape(rule.target_shape, dims),
            source_dtype=None,
            dtype=recorded.dtype,
        )
        for rule in expand(PYTHIA_TO_TL, config.n_layers, dims)
    )
    written = plan_processing(Plan(config, planned, recorded.dtype, ()), recorded.processing)
    return {t.key: t.shape for t in written.tensors}


def _check_tensors(
    info: OutputInfo, recorded: Recorded, expected: dict[str, tuple[int, ...]]
) -> None:
    dtype = SAFETENSORS_DTYPE_NAMES[recorded.dtype]
    missing = [key for key in expected if key not in info.tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OutputFileError(f"tensor {missing[0]} is missing{more}; tl_config implies it")
    extra = sorted(set(info.tensors) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise OutputFileError(
            f"tensor {extra[0]} is not part of the layout tl_config implies{more}"
        )
    for key, shape in expected.items():
        actual_dtype, actual_shape = info.tensors[key]
        if tuple(actual_shape) != shape:
            raise OutputFileError(
                f"tensor {key} has shape {actual_shape}, tl_config implies {list(shape)}"
            )
        if actual_dtype != dtype:
            raise OutputFileError(
                f"tensor {key} has dtype {actual_dtype}, metadata dtype says {dtype}"
            )


def _config_from_tl(cfg: dict[str, Any]) -> NeoXConfig:
    """The model's sizes as pythia-tl's config type, from a recorded ``tl_config``."""
    for key in _POSITIVE_INTS:
        value = cfg.get(key)
        _expect(_is_int(value) and value >= 1, f"tl_config {key}", value, "a positive integer")
    d_model, n_heads, d_head = cfg["d_model"], cfg["n_heads"], cfg["d_head"]
    _expect(d_head * n_heads == d_model, "tl_config d_head", d_head, "d_model / n_heads")
    rotary_dim = cfg.get("rotary_dim")
    _expect(
        _is_int(rotary_dim) and 0 <= rotary_dim <= d_head and rotary_dim % 2 == 0,
        "tl_config rotary_dim",
        rotary_dim,
        "an even integer in [0, d_head]",
    )
    for key in ("eps", "rotary_base"):
        value = cfg.get(key)
        _expect(_positive_float(value), f"tl_config {key}", value, "a positive finite number")
    parallel = cfg.get("parallel_attn_mlp")
    _expect(isinstance(parallel, bool), "tl_config parallel_attn_mlp", parallel, "true or false")
    _expect(cfg.get("act_fn") == "gelu", "tl_config act_fn", cfg.get("act_fn"), "'gelu'")
    return NeoXConfig(
        n_layers=cfg["n_layers"],
        d_model=d_model,
        n_heads=n_heads,
        d_mlp=cfg["d_mlp"],
        d_vocab=cfg["d_vocab"],
        n_ctx=cfg["n_ctx"],
        eps=cfg["eps"],
        rotary_pct=rotary_dim / d_head,
        rotary_base=cfg["rotary_base"],
        parallel_residual=parallel,
        act_fn="gelu",
        dtype=None,
    )


def _processing(steps: list[Any]) -> Processing:
    for step in steps:
        _expect(step in TL_ORDER, "processing", step, f"steps among {', '.join(TL_ORDER)}")
    processing = Processing(**dict.fromkeys(steps, True))
    _expect(list(processing.steps) == steps, "processing", steps, "each step once, in TL's order")
    return processing


def _source_files(files: dict[str, Any]) -> dict[str, str]:
    _expect(bool(files), "source_files", files, "at least one weight file")
    for name, digest in files.items():
        plain = name not in ("", ".", "..") and Path(name).name == name
        _expect(plain, "source_files", name, "plain file names")
        _expect(
            isinstance(digest, str) and bool(_SHA256.fullmatch(digest)),
            f"source_files[{name!r}]",
            digest,
            "a sha256 (64 hex digits)",
        )
    return files


def _expect(condition: bool, key: str, value: object, expected: str) -> None:
    if not condition:
        raise OutputFileError(f"metadata {key} is {_short(value)}, expected {expected}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_float(value: object) -> bool:
    """A JSON number that is positive and finite as a float (an integer with 400 digits is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:
        return False
