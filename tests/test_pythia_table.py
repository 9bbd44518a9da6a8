"""The Pythia table against TransformerLens' layout (REFERENCE.md section 2)."""

from __future__ import annotations

import einops
import pytest
import torch

from pythia_tl.mapping.pythia import IGNORED_SOURCE_KEYS, PYTHIA_TO_TL
from pythia_tl.mapping.rules import Rule, expand, invert

DIMS = {"n_layers": 3, "d_model": 24, "n_heads": 4, "d_head": 6, "d_mlp": 96, "d_vocab": 50}


def random_source(rules: list[Rule]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        rule.source: torch.randn(rule.source_shape(DIMS), generator=generator)
        for rule in rules
        if rule.source is not None
    }


def outputs_of(rules: list[Rule], source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for rule in rules:
        tensors = (
            rule.apply(source[rule.source], DIMS)
            if rule.source is not None
            else (rule.zeros(DIMS, torch.float32),)
        )
        converted.update(zip(rule.outputs, tensors, strict=True))
    return converted


def test_the_table_yields_16_tensors_per_layer_plus_5() -> None:
    rules = expand(PYTHIA_TO_TL, DIMS["n_layers"])
    keys = [key for rule in rules for key in rule.outputs]
    assert len(keys) == 16 * DIMS["n_layers"] + 5
    assert len(set(keys)) == len(keys)
    assert len(rules) == 12 * DIMS["n_layers"] + 5  # one rule per source tensor
    per_layer = {k.split(".", 2)[2] for k in keys if k.startswith("blocks.0.")}
    assert per_layer == {
        "ln1.w", "ln1.b", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.b_Q", "attn.b_K", "attn.b_V",
        "attn.W_O", "attn.b_O", "ln2.w", "ln2.b", "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out",
    }  # fmt: skip
    globals_ = {k for k in keys if not k.startswith("blocks.")}
    assert globals_ == {"embed.W_E", "ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"}


def test_every_rule_gives_its_declared_tl_shape() -> None:
    rules = expand(PYTHIA_TO_TL, DIMS["n_layers"])
    converted = outputs_of(rules, random_source(rules))
    for rule in rules:
        for key in rule.outputs:
            assert tuple(converted[key].shape) == rule.output_shape(DIMS), key


def test_qkv_follows_the_per_head_interleaved_row_order() -> None:
    """Row r of query_key_value belongs to head r // (3 d_head), part (r // d_head) % 3."""
    n, d_head, d_model = DIMS["n_heads"], DIMS["d_head"], DIMS["d_model"]
    rules = expand(PYTHIA_TO_TL, 1)
    source = random_source(rules)
    converted = outputs_of(rules, source)
    weight = source["gpt_neox.layers.0.attention.query_key_value.weight"]
    bias = source["gpt_neox.layers.0.attention.query_key_value.bias"]
    assert weight.shape == (3 * d_model, d_model)
    for part, name in enumerate("QKV"):
        w, b = converted[f"blocks.0.attn.W_{name}"], converted[f"blocks.0.attn.b_{name}"]
        for head in range(n):
            rows = slice((3 * head + part) * d_head, (3 * head + part + 1) * d_head)
            assert torch.equal(w[head], weight[rows].T)
            assert torch.equal(b[head], bias[rows])


def test_splitting_into_thirds_before_the_rearrange_mixes_heads() -> None:
    """The mistake of TransformerLens' bridge table: contiguous thirds, then per-head rearrange."""
    rules = expand(PYTHIA_TO_TL, 1)
    source = random_source(rules)
    converted = outputs_of(rules, source)
    weight = source["gpt_neox.layers.0.attention.query_key_value.weight"]
    for part, name in enumerate("QKV"):
        right = converted[f"blocks.0.attn.W_{name}"]
        third = weight.chunk(3, dim=0)[part]
        wrong = einops.rearrange(third, "(h d) m -> h m d", h=DIMS["n_heads"])
        assert wrong.shape == right.shape
        assert not torch.equal(wrong, right)


def test_with_one_head_both_orders_agree() -> None:
    dims = dict(DIMS, n_heads=1, d_head=DIMS["d_model"])
    (qkv,) = [r for r in expand(PYTHIA_TO_TL, 1) if r.source and "query_key_value.w" in r.source]
    weight = torch.randn(3 * dims["d_model"], dims["d_model"])
    for part, right in enumerate(qkv.apply(weight, dims)):
        naive = einops.rearrange(weight.chunk(3, dim=0)[part], "(h d) m -> h m d", h=1)
        assert torch.equal(right, naive)


def test_the_table_run_backwards_rebuilds_the_source_exactly() -> None:
    rules = expand(PYTHIA_TO_TL, DIMS["n_layers"])
    source = random_source(rules)
    rebuilt = invert(rules, outputs_of(rules, source), DIMS)
    assert rebuilt.keys() == source.keys()
    for name, tensor in source.items():
        assert torch.equal(rebuilt[name], tensor), name
        assert rebuilt[name].is_contiguous()


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
