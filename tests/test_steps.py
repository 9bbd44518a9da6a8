"""The step vocabulary: shapes from shapes alone, the computation, and the inverses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia_tl.converters.steps import (
    StepError,
    apply_chain,
    chain_shape,
    rearrange,
    split,
    transpose,
    zeros,
)


@settings(max_examples=40, deadline=None)
@given(
    n_heads=st.integers(1, 6),
    d_head=st.integers(1, 5),
    part=st.integers(0, 2),
)
def test_planned_shapes_equal_computed_shapes(n_heads: int, d_head: int, part: int) -> None:
    d_model = n_heads * d_head
    chain = (
        rearrange("(head part d_head) d_model -> (part head) d_model d_head", head=n_heads, part=3),
        split(0, 3, part),
    )
    weight = torch.randn(3 * d_model, d_model)
    out = apply_chain(chain, weight)
    assert chain_shape(chain, tuple(weight.shape)) == tuple(out.shape) == (n_heads, d_model, d_head)


@settings(max_examples=40, deadline=None)
@given(n_heads=st.integers(1, 6), d_head=st.integers(1, 5))
def test_every_step_is_undone_by_its_inverse(n_heads: int, d_head: int) -> None:
    d_model = n_heads * d_head
    x = torch.randn(d_model, d_model)
    for step in (
        rearrange("d_model (head d_head) -> head d_head d_model", head=n_heads),
        transpose(),
    ):
        assert torch.equal(step.inverse().apply(step.apply(x)), x)
    pieces = [split(0, n_heads, i).apply(x) for i in range(n_heads)]
    assert torch.equal(split(0, n_heads, 0).inverse().join(pieces), x)
    assert split(0, n_heads, 0).inverse().inverse() == split(0, n_heads, 0)


def test_named_sizes_are_bound_from_the_model_dims() -> None:
    step = rearrange("(head d_head) -> head d_head", head="n_heads").bind({"n_heads": 4})
    assert chain_shape([step], (12,)) == (4, 3)
    assert zeros("d_vocab").bind({"d_vocab": 7}).output_shape(()) == (7,)


def test_shape_errors_are_reported_before_any_data() -> None:
    with pytest.raises(StepError, match="not divisible"):
        split(0, 3, 0).output_shape((10, 4))
    with pytest.raises(StepError, match="does not fit"):
        rearrange("(head d_head) m -> head d_head m", head=3).output_shape((10, 4))
    with pytest.raises(StepError, match="unknown dimension"):
        rearrange("(head d) -> head d", head="n_kv_heads").bind({"n_heads": 2})


def test_zeros_reads_no_source_and_takes_the_requested_dtype() -> None:
    out = zeros(5).apply(torch.empty(0, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.zeros(5, dtype=torch.bfloat16))
