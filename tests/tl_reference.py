"""A from-scratch forward pass with TransformerLens' semantics, over a TL-format state dict.

It is the tests' oracle for converted checkpoints, so it is written for reading, not speed: plain
torch, float32, one block at a time, following TL's ``HookedTransformer`` for the GPT-NeoX case
(rotary positions, NeoX's rotate-halves, parallel or sequential attention and MLP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

Cfg = Mapping[str, Any]


def layer_norm(
    x: torch.Tensor, sd: Mapping[str, torch.Tensor], prefix: str, cfg: Cfg
) -> torch.Tensor:
    """TL's LayerNorm: "LN" centres, scales and applies w, b; "LNPre" only centres and scales."""
    kind = cfg.get("normalization_type", "LN")
    if kind is None:
        return x
    x = x - x.mean(dim=-1, keepdim=True)
    x = x / (x.pow(2).mean(dim=-1, keepdim=True) + cfg["eps"]).sqrt()
    if kind == "LNPre":
        return x
    if kind != "LN":
        raise NotImplementedError(f"normalization_type {kind!r}")
    return x * sd[f"{prefix}.w"].float() + sd[f"{prefix}.b"].float()


def rotary_sin_cos(n_pos: int, rotary_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_pos, rotary_dim] angles for rotate-halves: frequency i serves dims i and i + dim/2."""
    half = rotary_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float64) / half))
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.sin().float(), angles.cos().float()


def apply_rotary(x: torch.Tensor, cfg: Cfg) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` dims of each head of x [batch, pos, head, d_head]."""
    if cfg.get("rotary_adjacent_pairs", False):
        raise NotImplementedError("rotary_adjacent_pairs=True (GPT-J style) is not needed here")
    rotary_dim = cfg["rotary_dim"]
    sin, cos = rotary_sin_cos(x.shape[1], rotary_dim, cfg.get("rotary_base", 10000))
    sin, cos = sin[None, :, None, :], cos[None, :, None, :]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos + rotated_half * sin, rest], dim=-1)


def attention(
    x: torch.Tensor, sd: Mapping[str, torch.Tensor], prefix: str, cfg: Cfg
) -> torch.Tensor:
    """Causal multi-head attention with TL's per-head weights; x is [batch, pos, d_model]."""

    def project(name: str) -> torch.Tensor:
        w, b = sd[f"{prefix}.W_{name}"].float(), sd[f"{prefix}.b_{name}"].float()
        return torch.einsum("bpd,hde->bphe", x, w) + b

    q, k, v = project("Q"), project("K"), project("V")
    if cfg.get("positional_embedding_type", "rotary") == "rotary":
        q, k = apply_rotary(q, cfg), apply_rotary(k, cfg)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg["d_head"])
    n_pos = x.shape[1]
    future = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    pattern = scores.softmax(dim=-1)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    w_o = sd[f"{prefix}.W_O"].float()
    return torch.einsum("bqhe,hed->bqd", z, w_o) + sd[f"{prefix}.b_O"].float()


def mlp(x: torch.Tensor, sd: Mapping[str, torch.Tensor], prefix: str, cfg: Cfg) -> torch.Tensor:
    pre = x @ sd[f"{prefix}.W_in"].float() + sd[f"{prefix}.b_in"].float()
    act_fn = cfg.get("act_fn", "gelu")
    if act_fn == "gelu":
        post = torch.nn.functional.gelu(pre)
    elif act_fn in ("gelu_new", "gelu_pytorch_tanh"):
        post = torch.nn.functional.gelu(pre, approximate="tanh")
    else:
        raise NotImplementedError(f"act_fn {act_fn!r}")
    return post @ sd[f"{prefix}.W_out"].float() + sd[f"{prefix}.b_out"].float()


def tl_forward(
    state_dict: Mapping[str, torch.Tensor], cfg: Cfg, tokens: torch.Tensor
) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] in float32 for tokens [batch, pos]."""
    kind = cfg.get("positional_embedding_type", "rotary")
    if kind != "rotary":
        raise NotImplementedError(f"positional_embedding_type {kind!r}")
    sd = state_dict
    residual = sd["embed.W_E"].float()[tokens]
    for layer in range(cfg["n_layers"]):
        block = f"blocks.{layer}"
        attn_out = attention(
            layer_norm(residual, sd, f"{block}.ln1", cfg), sd, f"{block}.attn", cfg
        )
        if cfg.get("parallel_attn_mlp", False):
            mlp_in = residual
            residual = residual + attn_out
        else:
            residual = residual + attn_out
            mlp_in = residual
        residual = residual + mlp(
            layer_norm(mlp_in, sd, f"{block}.ln2", cfg), sd, f"{block}.mlp", cfg
        )
    final = layer_norm(residual, sd, "ln_final", cfg)
    w_u = sd["unembed.W_U"].float()
    b_u = sd["unembed.b_U"].float() if "unembed.b_U" in sd else torch.zeros(w_u.shape[1])
    return final @ w_u + b_u
