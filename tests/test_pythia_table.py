"""The Pythia table against TransformerLens' layout (REFERENCE.md section 2)."""

from __future__ import annotations

import einops
import pytest
import torch

from pythia_tl.converters.pythia import IGNORED_SOURCE_KEYS, PYTHIA_TO_TL
from pythia_tl.converters.rules import eval_shape, expand, invert
from pythia_tl.converters.steps import apply_chain, rearrange, split

DIMS = {"n_layers": 3, "d_model": 24, "n_heads": 4, "d_head": 6, "d_mlp": 96, "d_vocab": 50}


def random_source(rules: list) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        rule.source: torch.randn(eval_shape(rule.source_shape, DIMS), generator=generator)
        for rule in rules
        if rule.source is not None
    }


def test_the_table_yields_16_tensors_per_layer_plus_5() -> None:
    rules = expand(PYTHIA_TO_TL, DIMS["n_layers"], DIMS)
    assert len(rules) == 16 * DIMS["n_layers"] + 5
    assert len({rule.target for rule in rules}) == len(rules)
    per_layer = {r.target.split(".", 2)[2] for r in rules if r.target.startswith("blocks.0.")}
    assert per_layer == {
        "ln1.w", "ln1.b", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.b_Q", "attn.b_K", "attn.b_V",
        "attn.W_O", "attn.b_O", "ln2.w", "ln2.b", "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out",
    }  # fmt: skip
    globals_ = {rule.target for rule in rules if not rule.target.startswith("blocks.")}
    assert globals_ == {"embed.W_E", "ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"}


def test_every_rule_gives_its_declared_tl_shape() -> None:
    for rule in expand(PYTHIA_TO_TL, DIMS["n_layers"], DIMS):
        source = torch.empty(eval_shape(rule.source_shape, DIMS))
        assert tuple(apply_chain(rule.steps, source).shape) == eval_shape(rule.target_shape, DIMS)


def test_qkv_follows_the_per_head_interleaved_row_order() -> None:
    """Row r of query_key_value belongs to head r // (3 d_head), part (r // d_head) % 3."""
    n, d_head, d_model = DIMS["n_heads"], DIMS["d_head"], DIMS["d_model"]
    rules = {r.target: r for r in expand(PYTHIA_TO_TL, 1, DIMS)}
    weight = torch.randn(3 * d_model, d_model)
    bias = torch.randn(3 * d_model)
    for part, name in enumerate("QKV"):
        w = apply_chain(rules[f"blocks.0.attn.W_{name}"].steps, weight)
        b = apply_chain(rules[f"blocks.0.attn.b_{name}"].steps, bias)
        for head in range(n):
            rows = slice((3 * head + part) * d_head, (3 * head + part + 1) * d_head)
            assert torch.equal(w[head], weight[rows].T)
            assert torch.equal(b[head], bias[rows])


def test_splitting_into_thirds_before_the_rearrange_mixes_heads() -> None:
    """The mistake of TransformerLens' bridge table: contiguous thirds, then per-head rearrange."""
    rules = {r.target: r for r in expand(PYTHIA_TO_TL, 1, DIMS)}
    weight = torch.randn(3 * DIMS["d_model"], DIMS["d_model"])
    for part, name in enumerate("QKV"):
        right = apply_chain(rules[f"blocks.0.attn.W_{name}"].steps, weight)
        wrong_chain = (
            split(0, 3, part),
            rearrange("(head d_head) d_model -> head d_model d_head", head=DIMS["n_heads"]),
        )
        wrong = apply_chain(wrong_chain, weight)
        assert wrong.shape == right.shape
        assert not torch.equal(wrong, right)


def test_with_one_head_both_orders_agree() -> None:
    dims = dict(DIMS, n_heads=1, d_head=DIMS["d_model"])
    rules = {r.target: r for r in expand(PYTHIA_TO_TL, 1, dims)}
    weight = torch.randn(3 * dims["d_model"], dims["d_model"])
    for part, name in enumerate("QKV"):
        right = apply_chain(rules[f"blocks.0.attn.W_{name}"].steps, weight)
        naive = einops.rearrange(split(0, 3, part).apply(weight), "(h d) m -> h m d", h=1)
        assert torch.equal(right, naive)


def test_the_inverse_table_rebuilds_the_source_exactly() -> None:
    rules = expand(PYTHIA_TO_TL, DIMS["n_layers"], DIMS)
    source = random_source(rules)
    converted = {
        rule.target: apply_chain(rule.steps, source.get(rule.source, torch.empty(0)))
        for rule in rules
    }
    rebuilt = invert(rules, converted)
    assert rebuilt.keys() == source.keys()
    for name, tensor in source.items():
        assert torch.equal(rebuilt[name], tensor), name


@pytest.mark.parametrize(
    ("key", "ignored"),
    [
        ("gpt_neox.layers.3.attention.bias", True),
        ("gpt_neox.layers.3.attention.masked_bias", True),
        ("gpt_neox.layers.3.attention.rotary_emb.inv_freq", True),
        ("gpt_neox.layers.3.attention.dense.bias", False),
        ("gpt_neox.layers.3.attention.query_key_value.bias", False),
    ],
)
def test_only_the_legacy_buffers_are_ignored(key: str, ignored: bool) -> None:
    assert bool(IGNORED_SOURCE_KEYS.fullmatch(key)) is ignored
