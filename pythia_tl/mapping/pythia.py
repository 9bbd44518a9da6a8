"""The Pythia (GPT-NeoX) -> TransformerLens table: one rule per source tensor.

Read it line by line against TransformerLens' GPT-NeoX weight conversion. ``{l}`` is the layer.

``query_key_value`` stores its rows per head: head 0's Q, K, V rows, then head 1's, and so on,
i.e. ``(n_heads part d_head)``. The pattern brings ``part`` (Q/K/V) to the front; cutting the
rows into three contiguous thirds instead would mix heads and parts whenever n_heads > 1.
"""

from __future__ import annotations

import re

from pythia_tl.mapping.rules import Rule

LAYER = "gpt_neox.layers.{l}"
BLOCK = "blocks.{l}"

PYTHIA_TO_TL: tuple[Rule, ...] = (
    Rule("gpt_neox.embed_in.weight", "d_vocab d_model -> d_vocab d_model", ("embed.W_E",)),
    Rule(f"{LAYER}.input_layernorm.weight", "d_model -> d_model", (f"{BLOCK}.ln1.w",)),
    Rule(f"{LAYER}.input_layernorm.bias", "d_model -> d_model", (f"{BLOCK}.ln1.b",)),
    Rule(
        f"{LAYER}.attention.query_key_value.weight",
        "(n_heads part d_head) d_model -> part n_heads d_model d_head",
        (f"{BLOCK}.attn.W_Q", f"{BLOCK}.attn.W_K", f"{BLOCK}.attn.W_V"),
    ),
    Rule(
        f"{LAYER}.attention.query_key_value.bias",
        "(n_heads part d_head) -> part n_heads d_head",
        (f"{BLOCK}.attn.b_Q", f"{BLOCK}.attn.b_K", f"{BLOCK}.attn.b_V"),
    ),
    Rule(
        f"{LAYER}.attention.dense.weight",
        "d_model (n_heads d_head) -> n_heads d_head d_model",
        (f"{BLOCK}.attn.W_O",),
    ),
    Rule(f"{LAYER}.attention.dense.bias", "d_model -> d_model", (f"{BLOCK}.attn.b_O",)),
    Rule(f"{LAYER}.post_attention_layernorm.weight", "d_model -> d_model", (f"{BLOCK}.ln2.w",)),
    Rule(f"{LAYER}.post_attention_layernorm.bias", "d_model -> d_model", (f"{BLOCK}.ln2.b",)),
    Rule(f"{LAYER}.mlp.dense_h_to_4h.weight", "d_mlp d_model -> d_model d_mlp", (f"{BLOCK}.mlp.W_in",)),
    Rule(f"{LAYER}.mlp.dense_h_to_4h.bias", "d_mlp -> d_mlp", (f"{BLOCK}.mlp.b_in",)),
    Rule(f"{LAYER}.mlp.dense_4h_to_h.weight", "d_model d_mlp -> d_mlp d_model", (f"{BLOCK}.mlp.W_out",)),
    Rule(f"{LAYER}.mlp.dense_4h_to_h.bias", "d_model -> d_model", (f"{BLOCK}.mlp.b_out",)),
    Rule("gpt_neox.final_layer_norm.weight", "d_model -> d_model", ("ln_final.w",)),
    Rule("gpt_neox.final_layer_norm.bias", "d_model -> d_model", ("ln_final.b",)),
    Rule("embed_out.weight", "d_vocab d_model -> d_model d_vocab", ("unembed.W_U",), aliases=("lm_head.weight",)),
    # Pythia has no unembedding bias; TransformerLens expects one.
    Rule(None, "-> d_vocab", ("unembed.b_U",)),
)  # fmt: skip

# Buffers that older transformers saved beside the weights; they carry no learned values.
IGNORED_SOURCE_KEYS = re.compile(
    r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)"
)
