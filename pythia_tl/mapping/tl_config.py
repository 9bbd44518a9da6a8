"""The TransformerLens config of a converted Pythia model.

The dict is accepted by ``HookedTransformerConfig(**cfg)`` in TransformerLens 2.x and 3.x, whose
dataclass rejects unknown keywords, so it holds only fields both versions know.
"""

from __future__ import annotations

from typing import Any, Literal

from pythia_tl.source.config import NeoXConfig

NormalizationType = Literal["LN", "LNPre"]


def tl_config(
    config: NeoXConfig,
    model_name: str,
    tokenizer_name: str | None,
    normalization_type: NormalizationType = "LN",
) -> dict[str, Any]:
    return {
        "d_model": config.d_model,
        "d_head": config.d_head,
        "n_heads": config.n_heads,
        "d_mlp": config.d_mlp,
        "n_layers": config.n_layers,
        "n_ctx": config.n_ctx,
        "eps": config.eps,
        "d_vocab": config.d_vocab,
        "act_fn": config.act_fn,
        "normalization_type": normalization_type,
        "positional_embedding_type": "rotary",
        "rotary_dim": config.rotary_dim,
        "rotary_base": config.rotary_base,
        # GPT-NeoX rotates the two halves of the rotary dims, not adjacent pairs.
        "rotary_adjacent_pairs": False,
        "parallel_attn_mlp": config.parallel_residual,
        "original_architecture": "GPTNeoXForCausalLM",
        # Pythia was trained without a BOS token.
        "default_prepend_bos": False,
        "tokenizer_name": tokenizer_name,
        "model_name": model_name,
    }
