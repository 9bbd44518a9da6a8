"""The Pythia (GPT-NeoX) -> TransformerLens table.

Read it line by line against TransformerLens' GPT-NeoX weight conversion: each row is
``TL key, TL shape, HF key, HF shape, steps``. ``{l}`` is the layer index.

``query_key_value`` stores its rows per head: head 0's Q, K, V rows, then head 1's, and so on,
i.e. ``(head part d_head)``. The rearrange therefore runs first and brings ``part`` (Q/K/V) to the
front; only then is the tensor split into its three parts. Splitting first into contiguous thirds
would mix heads and parts whenever n_heads > 1.
"""

from __future__ import annotations

import re

from pythia_tl.converters.rules import Rule
from pythia_tl.converters.steps import rearrange, split, transpose, zeros

LAYER = "gpt_neox.layers.{l}"
QKV_W = f"{LAYER}.attention.query_key_value.weight"
QKV_B = f"{LAYER}.attention.query_key_value.bias"

# (head part d_head) rows -> (part head): Q heads, then K heads, then V heads.
QKV_W_BY_PART = rearrange(
    "(head part d_head) d_model -> (part head) d_model d_head", head="n_heads", part=3
)
QKV_B_BY_PART = rearrange("(head part d_head) -> (part head) d_head", head="n_heads", part=3)

V = ("n_heads", "d_model", "d_head")
D = ("d_model",)

PYTHIA_TO_TL: tuple[Rule, ...] = (
    Rule("embed.W_E", ("d_vocab", "d_model"), "gpt_neox.embed_in.weight", ("d_vocab", "d_model")),
    Rule("blocks.{l}.ln1.w", D, f"{LAYER}.input_layernorm.weight", D),
    Rule("blocks.{l}.ln1.b", D, f"{LAYER}.input_layernorm.bias", D),
    Rule("blocks.{l}.attn.W_Q", V, QKV_W, ("3*d_model", "d_model"), (QKV_W_BY_PART, split(0, 3, 0))),
    Rule("blocks.{l}.attn.W_K", V, QKV_W, ("3*d_model", "d_model"), (QKV_W_BY_PART, split(0, 3, 1))),
    Rule("blocks.{l}.attn.W_V", V, QKV_W, ("3*d_model", "d_model"), (QKV_W_BY_PART, split(0, 3, 2))),
    Rule("blocks.{l}.attn.b_Q", ("n_heads", "d_head"), QKV_B, ("3*d_model",), (QKV_B_BY_PART, split(0, 3, 0))),
    Rule("blocks.{l}.attn.b_K", ("n_heads", "d_head"), QKV_B, ("3*d_model",), (QKV_B_BY_PART, split(0, 3, 1))),
    Rule("blocks.{l}.attn.b_V", ("n_heads", "d_head"), QKV_B, ("3*d_model",), (QKV_B_BY_PART, split(0, 3, 2))),
    Rule(
        "blocks.{l}.attn.W_O",
        ("n_heads", "d_head", "d_model"),
        f"{LAYER}.attention.dense.weight",
        ("d_model", "d_model"),
        (rearrange("d_model (head d_head) -> head d_head d_model", head="n_heads"),),
    ),
    Rule("blocks.{l}.attn.b_O", D, f"{LAYER}.attention.dense.bias", D),
    Rule("blocks.{l}.ln2.w", D, f"{LAYER}.post_attention_layernorm.weight", D),
    Rule("blocks.{l}.ln2.b", D, f"{LAYER}.post_attention_layernorm.bias", D),
    Rule("blocks.{l}.mlp.W_in", ("d_model", "d_mlp"), f"{LAYER}.mlp.dense_h_to_4h.weight", ("d_mlp", "d_model"), (transpose(),)),
    Rule("blocks.{l}.mlp.b_in", ("d_mlp",), f"{LAYER}.mlp.dense_h_to_4h.bias", ("d_mlp",)),
    Rule("blocks.{l}.mlp.W_out", ("d_mlp", "d_model"), f"{LAYER}.mlp.dense_4h_to_h.weight", ("d_model", "d_mlp"), (transpose(),)),
    Rule("blocks.{l}.mlp.b_out", D, f"{LAYER}.mlp.dense_4h_to_h.bias", D),
    Rule("ln_final.w", D, "gpt_neox.final_layer_norm.weight", D),
    Rule("ln_final.b", D, "gpt_neox.final_layer_norm.bias", D),
    Rule("unembed.W_U", ("d_model", "d_vocab"), "embed_out.weight", ("d_vocab", "d_model"), (transpose(),), aliases=("lm_head.weight",)),
    Rule("unembed.b_U", ("d_vocab",), None, (), (zeros("d_vocab"),)),
)  # fmt: skip

# Buffers that older transformers saved beside the weights; they carry no learned values.
IGNORED_SOURCE_KEYS = re.compile(
    r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)"
)
