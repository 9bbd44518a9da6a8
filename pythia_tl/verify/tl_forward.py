"""TransformerLens' forward pass for the GPT-NeoX models pythia-tl writes, over a TL state dict.

The logits check of ``verify`` runs a converted file through it and compares the result with
transformers' own model of the source. It follows TransformerLens' ``HookedTransformer`` for this
one architecture: LayerNorm ("LN", or "LNPre" once folded), rotary attention that rotates the two
halves of the first ``rotary_dim`` dimensions of each head (GPT-NeoX's convention), exact GELU, and
attention and MLP reading the same residual when ``parallel_attn_mlp`` is set.

Everything is computed in float32. Tensors are looked up in the mapping block by block, when they
are needed, so a mapping that reads lazily from a file holds about one block in memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

Weights = Mapping[str, torch.Tensor]
TLConfig = Mapping[str, Any]


def check_supported(cfg: TLConfig) -> None:
    """Refuse a config this forward pass does not implement (ValueError naming the field)."""
    expected = {
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "act_fn": "gelu",
    }
    for key, value in expected.items():
        if cfg.get(key) != value:
            raise ValueError(f"tl_config {key} is {cfg.get(key)!r}; only {value!r} is supported")
    if cfg.get("normalization_type") not in ("LN", "LNPre"):
        raise ValueError(f"tl_config normalization_type {cfg.get('normalization_type')!r}")


def tl_logits(weights: Weights, cfg: TLConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Float32 logits ``[batch, pos, d_vocab]`` for integer ``tokens`` ``[batch, pos]``."""
    check_supported(cfg)
    residual = _f32(weights, "embed.W_E")[tokens]
    sin, cos = _rotary_tables(tokens.shape[1], cfg["rotary_dim"], cfg["rotary_base"])
    for layer in range(cfg["n_layers"]):
        block = f"blocks.{layer}"
        attn_out = _attention(
            _layer_norm(residual, weights, f"{block}.ln1", cfg),
            weights,
            f"{block}.attn",
            cfg,
            sin,
            cos,
        )
        # Parallel blocks feed the MLP the block's input; sequential ones the updated residual.
        mlp_input = residual if cfg["parallel_attn_mlp"] else residual + attn_out
        mlp_out = _mlp(
            _layer_norm(mlp_input, weights, f"{block}.ln2", cfg), weights, f"{block}.mlp"
        )
        residual = residual + attn_out + mlp_out
    final = _layer_norm(residual, weights, "ln_final", cfg)
    return final @ _f32(weights, "unembed.W_U") + _f32(weights, "unembed.b_U")


def _f32(weights: Weights, key: str) -> torch.Tensor:
    return weights[key].to(torch.float32)


def _layer_norm(x: torch.Tensor, weights: Weights, prefix: str, cfg: TLConfig) -> torch.Tensor:
    centred = x - x.mean(dim=-1, keepdim=True)
    normed = centred / torch.sqrt(centred.square().mean(dim=-1, keepdim=True) + cfg["eps"])
    if cfg["normalization_type"] == "LNPre":
        return normed  # the scale and bias were folded into the readers' weights
    return normed * _f32(weights, f"{prefix}.w") + _f32(weights, f"{prefix}.b")


def _rotary_tables(n_pos: int, rotary_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos ``[pos, rotary_dim]``: frequency i turns dimensions i and i + rotary_dim / 2."""
    half = rotary_dim // 2
    frequencies = base ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float64), frequencies)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.sin().to(torch.float32), angles.cos().to(torch.float32)


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary positions on the first ``rotary_dim`` dims of x ``[batch, pos, head, d_head]``."""
    rotary_dim = sin.shape[-1]
    turned, kept = x[..., :rotary_dim], x[..., rotary_dim:]
    first, second = turned.chunk(2, dim=-1)
    swapped = torch.cat([-second, first], dim=-1)
    sin, cos = sin[None, :, None, :], cos[None, :, None, :]
    return torch.cat([turned * cos + swapped * sin, kept], dim=-1)


def _attention(
    x: torch.Tensor,
    weights: Weights,
    prefix: str,
    cfg: TLConfig,
    sin: torch.Tensor,
    cos: torch.Tensor,
) -> torch.Tensor:
    def heads(part: str) -> torch.Tensor:
        w, b = _f32(weights, f"{prefix}.W_{part}"), _f32(weights, f"{prefix}.b_{part}")
        return torch.einsum("bpm,hmd->bphd", x, w) + b

    queries = _rotate(heads("Q"), sin, cos)
    keys = _rotate(heads("K"), sin, cos)
    values = heads("V")
    scores = torch.einsum("bqhd,bkhd->bhqk", queries, keys) / math.sqrt(cfg["d_head"])
    n_pos = x.shape[1]
    later = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(diagonal=1)
    pattern = scores.masked_fill(later, float("-inf")).softmax(dim=-1)
    mixed = torch.einsum("bhqk,bkhd->bqhd", pattern, values)
    out = torch.einsum("bqhd,hdm->bqm", mixed, _f32(weights, f"{prefix}.W_O"))
    return out + _f32(weights, f"{prefix}.b_O")


def _mlp(x: torch.Tensor, weights: Weights, prefix: str) -> torch.Tensor:
    hidden = x @ _f32(weights, f"{prefix}.W_in") + _f32(weights, f"{prefix}.b_in")
    activated = torch.nn.functional.gelu(hidden)  # exact erf GELU, as Pythia uses
    return activated @ _f32(weights, f"{prefix}.W_out") + _f32(weights, f"{prefix}.b_out")
