"""Rules: shapes from the pattern alone (as einops computes them), the computation, and running
backwards."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia_tl.mapping.rules import Rule, RuleError

QKV = Rule(
    "qkv",
    "(n_heads part d_head) d_model -> part n_heads d_model d_head",
    ("W_Q", "W_K", "W_V"),
)
W_O = Rule("dense", "d_model (n_heads d_head) -> n_heads d_head d_model", ("W_O",))
W_IN = Rule("up", "d_mlp d_model -> d_model d_mlp", ("W_in",))


def dims(n_heads: int, d_head: int, d_mlp: int = 7) -> dict[str, int]:
    return {"n_heads": n_heads, "d_head": d_head, "d_model": n_heads * d_head, "d_mlp": d_mlp}


@settings(max_examples=40, deadline=None)
@given(n_heads=st.integers(1, 6), d_head=st.integers(1, 5))
def test_planned_shapes_equal_computed_shapes(n_heads: int, d_head: int) -> None:
    sizes = dims(n_heads, d_head)
    d_model = sizes["d_model"]
    assert QKV.source_shape(sizes) == (3 * d_model, d_model)
    outputs = QKV.apply(torch.randn(3 * d_model, d_model), sizes)
    assert [tuple(o.shape) for o in outputs] == [QKV.output_shape(sizes)] * 3
    assert QKV.output_shape(sizes) == (n_heads, d_model, d_head)


@settings(max_examples=40, deadline=None)
@given(n_heads=st.integers(1, 6), d_head=st.integers(1, 5))
def test_every_rule_is_undone_by_running_it_backwards(n_heads: int, d_head: int) -> None:
    sizes = dims(n_heads, d_head)
    for rule in (QKV, W_O, W_IN):
        source = torch.randn(rule.source_shape(sizes))
        assert torch.equal(rule.invert(rule.apply(source, sizes), sizes), source)


def test_sizes_are_the_model_dims_the_pattern_names() -> None:
    assert W_O.sizes({"d_model": 12, "n_heads": 4, "d_head": 3, "d_vocab": 9}) == {
        "d_model": 12,
        "n_heads": 4,
        "d_head": 3,
    }
    assert QKV.sizes(dims(2, 3))["part"] == 3
    zeros = Rule(None, "-> d_vocab", ("b_U",))
    assert zeros.output_shape({"d_vocab": 7}) == (7,)


def test_shape_errors_are_reported_before_any_data() -> None:
    with pytest.raises(RuleError, match="does not fit"):
        QKV.apply(torch.empty(10, 4, device="meta"), dims(2, 2))
    with pytest.raises(RuleError, match="unknown dimension"):
        Rule("x", "(n_kv_heads d) -> n_kv_heads d", ("y",)).sizes({"n_heads": 2, "d": 1})
    with pytest.raises(RuleError, match="several outputs"):
        Rule("x", "a b -> b a", ("y", "z"))
    with pytest.raises(RuleError, match="does not fit"):
        Rule(None, "a -> a", ("y",))


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a b -> a b", "unclosed"),
        ("a ... -> a", "unexpected '.'"),
        ("a 1 -> a", "unexpected '1'"),
        ("a a -> a", "twice"),
        ("a b -> a", "same axes"),
        ("((a b) c) -> a b c", "unexpected '\\('"),
    ],
)
def test_patterns_beyond_axes_and_groups_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(RuleError, match=reason):
        Rule("x", pattern, ("y",))


FLATTEN = Rule("up", "d_mlp d_model -> (d_model d_mlp)", ("flat",))


@pytest.mark.parametrize("rule", [QKV, W_O, W_IN, FLATTEN])
def test_shapes_read_from_the_pattern_are_the_ones_einops_computes(rule: Rule) -> None:
    sizes = dims(3, 5)
    source = torch.empty(rule.source_shape(sizes), device="meta")
    outputs = rule.apply(source, sizes)
    assert [tuple(o.shape) for o in outputs] == [rule.output_shape(sizes)] * len(rule.outputs)
    # einops names a wrong shape instead of guessing from it
    wrong = torch.empty((rule.source_shape(sizes)[0] + 1, *rule.source_shape(sizes)[1:]))
    with pytest.raises(RuleError, match="does not fit"):
        rule.apply(wrong.to("meta"), sizes)


def test_zeros_read_no_source_take_the_requested_dtype_and_give_nothing_back() -> None:
    rule = Rule(None, "-> d_vocab", ("b_U",))
    out = rule.zeros({"d_vocab": 5}, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.zeros(5, dtype=torch.bfloat16))
    rule.invert([out], {"d_vocab": 5})
    with pytest.raises(RuleError, match="non-zero"):
        rule.invert([torch.ones(5)], {"d_vocab": 5})
