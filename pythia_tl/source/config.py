"""GPT-NeoX ``config.json``: read, validate and turn into the sizes the conversion needs."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythia_tl.dtypes import OUTPUT_DTYPE_NAMES
from pythia_tl.errors import ConfigError
from pythia_tl.small_files import NotASmallFile, read_small_file

# Far above any real model, low enough to refuse a config that would plan terabytes of tensors.
MAX_LAYERS = 1024
_MAX_WIDTH = 1 << 20
# The largest each size may be, by NeoXConfig field: in config.json and in a file's tl_config.
SIZE_LIMITS = {
    "n_layers": MAX_LAYERS,
    "d_model": _MAX_WIDTH,
    "n_heads": _MAX_WIDTH,
    "d_mlp": _MAX_WIDTH * 8,
    "d_vocab": _MAX_WIDTH * 4,
    "n_ctx": _MAX_WIDTH * 4,
}
# A GPT-NeoX config.json is about 1 kB.
MAX_CONFIG_BYTES = 1 << 20
_MAX_FLOAT = sys.float_info.max  # finite: refuses Infinity, which JSON parsing lets through


@dataclass(frozen=True)
class NeoXConfig:
    """The fields of a GPT-NeoX config that fix the shapes and the math of a Pythia model."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    eps: float
    rotary_pct: float
    rotary_base: float
    parallel_residual: bool
    act_fn: str
    dtype: str | None

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return round(self.rotary_pct * self.d_head)

    def dims(self) -> dict[str, int]:
        """The named sizes that rule templates and shape checks refer to."""
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_head": self.d_head,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
        }


def read_config(path: Path) -> NeoXConfig:
    """Read and validate ``config.json``; raise ConfigError naming the file and field at fault."""
    try:
        raw = json.loads(read_small_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except NotASmallFile as exc:
        raise ConfigError(f"{path}: {exc}; not a model config") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; a checkpoint needs its config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise ConfigError(f"{path}: not a readable JSON file (a number is too long)") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a readable JSON file (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return parse_config(raw, origin=str(path))


def parse_config(raw: dict[str, Any], origin: str = "config.json") -> NeoXConfig:
    """Validate a GPT-NeoX config dict; both Hub (``rotary_pct``) and transformers-5
    (``rope_parameters``) spellings are accepted."""
    fields = _Fields(raw, origin)
    model_type = raw.get("model_type")
    if model_type is not None and model_type != "gpt_neox":
        raise ConfigError(f"{origin}: model_type is {model_type!r}, expected 'gpt_neox'")

    d_model = fields.integer("hidden_size", 1, SIZE_LIMITS["d_model"])
    n_heads = fields.integer("num_attention_heads", 1, SIZE_LIMITS["n_heads"])
    if d_model % n_heads:
        raise ConfigError(
            f"{origin}: hidden_size {d_model} is not divisible by num_attention_heads {n_heads}"
        )
    _refuse_what_transformer_lens_lacks(raw, origin)
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        rotary_key = "rope_parameters.partial_rotary_factor"
        rotary_pct = fields.number_in(rope, rotary_key, 0.0, 1.0)
        rotary_base = fields.number_in(rope, "rope_parameters.rope_theta", 1e-9, _MAX_FLOAT)
    else:
        rotary_key = "rotary_pct"
        rotary_pct = fields.number(rotary_key, 0.0, 1.0)
        rotary_base = fields.number("rotary_emb_base", 1e-9, _MAX_FLOAT, default=10000.0)
    rotary_dims = rotary_pct * (d_model // n_heads)
    # NeoX rotates two equal halves; transformers truncates the product, TransformerLens rounds
    # it: only an even whole number means the same thing to both.
    if abs(rotary_dims - round(rotary_dims)) > 1e-6 or round(rotary_dims) % 2:
        raise ConfigError(
            f"{origin}: {rotary_key} {rotary_pct} of head size {d_model // n_heads} gives "
            f"{rotary_dims:g} rotary dimensions, expected an even whole number"
        )
    act_fn = raw.get("hidden_act", "gelu")
    if act_fn != "gelu":
        raise ConfigError(
            f"{origin}: hidden_act is {_shown(act_fn)}, expected 'gelu' (exact erf, the only "
            "activation both GPT-NeoX and TransformerLens name the same way)"
        )
    dtype = raw.get("dtype", raw.get("torch_dtype"))
    return NeoXConfig(
        n_layers=fields.integer("num_hidden_layers", 1, SIZE_LIMITS["n_layers"]),
        d_model=d_model,
        n_heads=n_heads,
        d_mlp=fields.integer("intermediate_size", 1, SIZE_LIMITS["d_mlp"]),
        d_vocab=fields.integer("vocab_size", 1, SIZE_LIMITS["d_vocab"]),
        n_ctx=fields.integer("max_position_embeddings", 1, SIZE_LIMITS["n_ctx"]),
        eps=fields.number("layer_norm_eps", 0.0, 1.0, default=1e-5),
        rotary_pct=rotary_pct,
        rotary_base=rotary_base,
        parallel_residual=fields.boolean("use_parallel_residual", default=True),
        act_fn=act_fn,
        dtype=dtype if dtype in OUTPUT_DTYPE_NAMES else None,
    )


# GPT-NeoX fields whose other values TransformerLens' HookedTransformer cannot express (its
# GPT-NeoX conversion reads the fused QKV and dense biases, a separate unembedding, and plain
# rotary with no scaling): field -> (the value it can express, what that value means).
_EXPRESSIBLE: dict[str, tuple[object, str]] = {
    "attention_bias": (True, "attention projections with biases"),
    "tie_word_embeddings": (False, "an unembedding separate from the embedding"),
    "rope_scaling": (None, "rotary positions without scaling"),
    "rope_parameters.rope_type": ("default", "rotary positions without scaling"),
}


def _refuse_what_transformer_lens_lacks(raw: dict[str, Any], origin: str) -> None:
    for key, (expected, meaning) in _EXPRESSIBLE.items():
        mapping: object = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            mapping = mapping.get(parent) if isinstance(mapping, dict) else None
        if not isinstance(mapping, dict) or leaf not in mapping:
            continue
        value = mapping[leaf]
        if value is None and expected is None:
            continue
        if type(value) is not type(expected) or value != expected:
            raise ConfigError(
                f"{origin}: {key} is {_shown(value)}; TransformerLens can express only "
                f"{json.dumps(expected)} ({meaning})"
            )


def _shown(value: object) -> str:
    """A config value for an error line, cut short (the config is untrusted)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed access to config fields with one-line errors that name the field."""

    def __init__(self, raw: dict[str, Any], origin: str) -> None:
        self.raw = raw
        self.origin = origin

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw.get(key)
        if value is None:
            raise ConfigError(f"{self.origin}: missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"{self.origin}: {key} is {value!r}, expected an integer in [{low}, {high}]"
            )
        return value

    def number(self, key: str, low: float, high: float, default: float | None = None) -> float:
        if key not in self.raw and default is not None:
            return default
        return self.number_in(self.raw, key, low, high)

    def number_in(self, mapping: dict[str, Any], key: str, low: float, high: float) -> float:
        value = mapping.get(key.rsplit(".", 1)[-1])
        if value is None:
            raise ConfigError(f"{self.origin}: missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.origin}: {key} is {value!r}, expected a number")
        if not (low <= value <= high) or math.isnan(value):
            raise ConfigError(
                f"{self.origin}: {key} is {value!r}, expected a number in [{low}, {high}]"
            )
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.origin}: {key} is {value!r}, expected true or false")
        return value
