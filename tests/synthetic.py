"""Random Pythia-shaped checkpoints in the Hub's file layouts, for tests, examples and benchmarks.

A test fixture, not part of the package: examples/ and benchmarks/ import it by path. Tensors
are generated a few at a time (on two threads); safetensors files are streamed tensor by tensor
and ``.bin`` files are written one shard at a time, so at most one shard is held in memory: a
pythia-12b-sized checkpoint can be written on a machine smaller than it.

Every tensor draws from its own ``torch.Generator`` seeded from ``seed`` and the tensor's name, so
the same seed gives the same values whatever the layout, the head name or the shard size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pythia_tl.dtypes import by_torch

Layout = Literal["safetensors", "safetensors-sharded", "bin", "bin-sharded"]
ConfigStyle = Literal["hub", "v5"]
HeadName = Literal["embed_out", "lm_head"]

LAYOUTS: tuple[Layout, ...] = ("safetensors", "safetensors-sharded", "bin", "bin-sharded")
DEFAULT_SHARD_BYTES = 2 * 1024**3
ROTARY_BASE = 10000


@dataclass(frozen=True)
class PythiaShape:
    """The sizes that define a GPT-NeoX model in the Pythia family."""

    n_layers: int
    d_model: int
    n_heads: int
    d_vocab: int
    rotary_pct: float = 0.25
    n_ctx: int = 2048
    d_mlp: int | None = None
    # False: the sequential GPT-NeoX block (RedPajama-INCITE), the MLP reads attention's output.
    parallel_residual: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        """``d_mlp``, defaulting to ``4 * d_model`` as in every Pythia model."""
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def rotary_dim(self) -> int:
        return round(self.rotary_pct * self.d_head)

    @property
    def n_params(self) -> int:
        """Number of weights (legacy buffers excluded)."""
        d, m = self.d_model, self.mlp_dim
        per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
        return 2 * self.d_vocab * d + self.n_layers * per_layer + 2 * d

    def to_hf_config(self, style: ConfigStyle = "hub", dtype: torch.dtype = torch.float16) -> dict:
        """A GPTNeoX ``config.json`` in the Hub's spelling (``"hub"``) or transformers 5's."""
        config: dict = {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "hidden_size": self.d_model,
            "intermediate_size": self.mlp_dim,
            "num_attention_heads": self.n_heads,
            "num_hidden_layers": self.n_layers,
            "vocab_size": self.d_vocab,
            "max_position_embeddings": self.n_ctx,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "use_parallel_residual": self.parallel_residual,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "initializer_range": 0.02,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "use_cache": True,
        }
        dtype_name = by_torch()[dtype].name
        if style == "hub":
            config["rotary_pct"] = self.rotary_pct
            config["rotary_emb_base"] = ROTARY_BASE
            config["torch_dtype"] = dtype_name
            config["transformers_version"] = "4.24.0"
        elif style == "v5":
            config["rope_parameters"] = {
                "partial_rotary_factor": self.rotary_pct,
                "rope_theta": ROTARY_BASE,
                "rope_type": "default",
            }
            config["dtype"] = dtype_name
            config["transformers_version"] = "5.0.0"
        else:
            raise ValueError(f"unknown config style {style!r}")
        return config


def _pythia(n_layers: int, d_model: int, n_heads: int, d_vocab: int = 50304) -> PythiaShape:
    return PythiaShape(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_vocab=d_vocab)


PYTHIA_SHAPES: dict[str, PythiaShape] = {
    "pythia-14m": _pythia(6, 128, 4),
    "pythia-31m": _pythia(6, 256, 8),
    "pythia-70m": _pythia(6, 512, 8),
    "pythia-160m": _pythia(12, 768, 12),
    "pythia-410m": _pythia(24, 1024, 16),
    "pythia-1b": _pythia(16, 2048, 8),
    "pythia-1.4b": _pythia(24, 2048, 16),
    "pythia-2.8b": _pythia(32, 2560, 32),
    "pythia-6.9b": _pythia(32, 4096, 32, 50432),
    "pythia-12b": _pythia(36, 5120, 40, 50688),
}


@dataclass(frozen=True)
class _Spec:
    """One tensor to write: its file name, shape, dtype and how to fill it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: Literal["matrix", "bias", "ln_weight", "ln_bias", "mask", "masked_bias", "inv_freq"]
    fan_in: int = 1
    seed_name: str = ""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _specs(
    shape: PythiaShape, dtype: torch.dtype, head_name: HeadName, buffers: bool
) -> list[_Spec]:
    d, m, v = shape.d_model, shape.mlp_dim, shape.d_vocab
    specs = [_Spec("gpt_neox.embed_in.weight", (v, d), dtype, "matrix")]
    for i in range(shape.n_layers):
        p = f"gpt_neox.layers.{i}."
        specs += [
            _Spec(p + "input_layernorm.weight", (d,), dtype, "ln_weight"),
            _Spec(p + "input_layernorm.bias", (d,), dtype, "ln_bias"),
            _Spec(p + "post_attention_layernorm.weight", (d,), dtype, "ln_weight"),
            _Spec(p + "post_attention_layernorm.bias", (d,), dtype, "ln_bias"),
        ]
        if buffers:
            n = shape.n_ctx
            specs += [
                _Spec(p + "attention.bias", (1, 1, n, n), torch.uint8, "mask"),
                _Spec(p + "attention.masked_bias", (), torch.float32, "masked_bias"),
                _Spec(
                    p + "attention.rotary_emb.inv_freq",
                    (shape.rotary_dim // 2,),
                    torch.float32,
                    "inv_freq",
                ),
            ]
        specs += [
            _Spec(p + "attention.query_key_value.weight", (3 * d, d), dtype, "matrix", d),
            _Spec(p + "attention.query_key_value.bias", (3 * d,), dtype, "bias"),
            _Spec(p + "attention.dense.weight", (d, d), dtype, "matrix", d),
            _Spec(p + "attention.dense.bias", (d,), dtype, "bias"),
            _Spec(p + "mlp.dense_h_to_4h.weight", (m, d), dtype, "matrix", d),
            _Spec(p + "mlp.dense_h_to_4h.bias", (m,), dtype, "bias"),
            _Spec(p + "mlp.dense_4h_to_h.weight", (d, m), dtype, "matrix", m),
            _Spec(p + "mlp.dense_4h_to_h.bias", (d,), dtype, "bias"),
        ]
    specs += [
        _Spec("gpt_neox.final_layer_norm.weight", (d,), dtype, "ln_weight"),
        _Spec("gpt_neox.final_layer_norm.bias", (d,), dtype, "ln_bias"),
        # Seeded under one name so both head spellings hold the same values.
        _Spec(f"{head_name}.weight", (v, d), dtype, "matrix", d, seed_name="embed_out.weight"),
    ]
    return specs


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _make(spec: _Spec, shape: PythiaShape, seed: int) -> torch.Tensor:
    if spec.kind == "mask":
        n = shape.n_ctx
        return torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(spec.shape)
    if spec.kind == "masked_bias":
        return torch.tensor(-1e9, dtype=torch.float32)
    if spec.kind == "inv_freq":
        exponents = torch.arange(0, shape.rotary_dim, 2, dtype=torch.float32) / shape.rotary_dim
        return 1.0 / (ROTARY_BASE**exponents)
    # Drawn in float32 so that a float32 and a float16 checkpoint of one seed agree up to rounding.
    values = torch.empty(spec.shape, dtype=torch.float32)
    values.normal_(generator=_generator(seed, spec.seed_name or spec.name))
    if spec.kind == "matrix":
        # Scaled by fan-in so that activations stay O(1) at every size (and inside float16).
        values.mul_(min(0.1, max(0.02, spec.fan_in**-0.5)))
    elif spec.kind == "bias":
        values.mul_(0.05)
    elif spec.kind == "ln_weight":
        values.mul_(0.1).add_(1.0)
    else:
        values.mul_(0.1)
    return values.to(spec.dtype)


def _made(specs: list[_Spec], shape: PythiaShape, seed: int) -> Iterator[torch.Tensor]:
    """The specs' tensors in order, drawn two at a time on two threads (random draws dominate
    and release the GIL; each tensor has its own generator, so threads do not change values)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[Future[torch.Tensor]] = deque()
        for spec in specs:
            pending.append(pool.submit(_make, spec, shape, seed))
            if len(pending) > 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def iter_tensors(
    shape: PythiaShape,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    head_name: HeadName = "embed_out",
    legacy_buffers: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(HF name, tensor)`` one at a time, in GPT-NeoX state-dict order."""
    for spec in _specs(shape, dtype, head_name, legacy_buffers):
        yield spec.name, _make(spec, shape, seed)


def _plan_shards(specs: list[_Spec], shard_bytes: int) -> list[list[_Spec]]:
    shards: list[list[_Spec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _write_safetensors(path: Path, specs: list[_Spec], shape: PythiaShape, seed: int) -> None:
    """Write a safetensors file tensor by tensor: the header only needs shapes and dtypes."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        end = offset + spec.nbytes
        header[spec.name] = {
            "dtype": by_torch()[spec.dtype].safetensors,
            "shape": list(spec.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for tensor in _made(specs, shape, seed):
            # Raw little-endian bytes, as safetensors stores them.
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


def write_checkpoint(
    folder: Path,
    shape: PythiaShape,
    *,
    layout: Layout,
    config_style: ConfigStyle = "hub",
    head_name: HeadName = "embed_out",
    legacy_buffers: bool | Literal["always"] = True,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> None:
    """Write ``config.json`` and random weights for ``shape`` into ``folder`` in ``layout``.

    ``legacy_buffers``: the per-layer ``attention.bias``, ``attention.masked_bias`` and
    ``attention.rotary_emb.inv_freq`` buffers that old transformers saved. ``True`` writes them
    in the ``.bin`` layouts only, which is where the Hub's old files have them; ``"always"``
    writes them in every layout; ``False`` never.

    Sharded layouts start a new shard before a tensor that would take the current one past
    ``shard_bytes`` (a tensor larger than that gets a shard of its own) and add the index file;
    single-file layouts ignore ``shard_bytes``. Safetensors files are streamed tensor by tensor;
    a ``.bin`` file is built in memory by ``torch.save``, so a single-file ``.bin`` holds the
    whole model at once (real sizes use ``bin-sharded``, as the Hub's 6.9b and 12b do).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    is_bin = layout.startswith("bin")
    buffers = legacy_buffers == "always" or (legacy_buffers is True and is_bin)
    specs = _specs(shape, dtype, head_name, buffers)
    sharded = layout.endswith("-sharded")
    shards = _plan_shards(specs, shard_bytes) if sharded else [specs]
    stem, suffix = ("pytorch_model", ".bin") if is_bin else ("model", ".safetensors")

    folder.mkdir(parents=True, exist_ok=True)
    config = shape.to_hf_config(config_style, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, start=1):
        filename = f"{stem}-{k:05d}-of-{len(shards):05d}{suffix}" if sharded else stem + suffix
        if is_bin:
            tensors = dict(zip((s.name for s in shard), _made(shard, shape, seed), strict=True))
            torch.save(tensors, folder / filename)
            del tensors
        else:
            _write_safetensors(folder / filename, shard, shape, seed)
        weight_map.update(dict.fromkeys((spec.name for spec in shard), filename))

    if sharded:
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in specs)},
            "weight_map": weight_map,
        }
        index_name = f"{stem}{suffix}.index.json"
        (folder / index_name).write_text(json.dumps(index, indent=2) + "\n")
