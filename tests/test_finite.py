"""The finiteness rule: one cheap reduction for finite tensors, the exact search otherwise."""

from __future__ import annotations

import math

import pytest
import torch

import pythia_tl.engine.finite as finite
from pythia_tl.engine.finite import NonFinite, all_finite, find_nonfinite, locate_nonfinite
from pythia_tl.errors import CheckpointError

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
NAN, INF = float("nan"), float("inf")


def ramp(dtype: torch.dtype, n: int = 3 * 1000) -> torch.Tensor:
    """Finite values of both signs whose sum is small in every dtype."""
    return torch.linspace(-2, 2, n).to(dtype).reshape(3, -1)


@pytest.mark.parametrize("dtype", FLOATS)
def test_finite_tensors_pass_without_the_exact_search(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_search(key: str, tensor: torch.Tensor) -> NonFinite | None:
        raise AssertionError("a finite tensor was searched element by element")

    monkeypatch.setattr(finite, "locate_nonfinite", no_search)
    assert all_finite(ramp(dtype))
    assert find_nonfinite("w", ramp(dtype)) is None
    assert find_nonfinite("w", ramp(dtype).t()) is None  # not contiguous
    assert find_nonfinite("empty", torch.empty(0, 4, dtype=dtype)) is None
    assert find_nonfinite("ids", torch.arange(10)) is None


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    ("values", "count", "first"),
    [
        ({5: NAN}, 1, 5),
        ({1999: INF}, 1, 1999),
        ({2998: -INF}, 1, 2998),
        ({7: INF, 8: -INF}, 2, 7),  # their sum is NaN
        ({40: -INF, 3: NAN, 2500: INF}, 3, 3),
    ],
)
def test_nan_and_infinities_are_counted_and_the_first_is_named(
    dtype: torch.dtype, values: dict[int, float], count: int, first: int
) -> None:
    tensor = ramp(dtype)
    for position, value in values.items():
        tensor.view(-1)[position] = value
    assert not all_finite(tensor)
    found = find_nonfinite("w", tensor)
    assert found is not None
    assert (found.key, found.count, found.index) == ("w", count, list(divmod(first, 1000)))
    assert math.isnan(found.value) if math.isnan(values[first]) else found.value == values[first]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(torch.float16, 60000.0), (torch.bfloat16, 3e38), (torch.float32, 3e38)],
)
def test_finite_values_whose_sum_overflows_are_finite(dtype: torch.dtype, value: float) -> None:
    tensor = torch.full((4, 64), value, dtype=dtype)
    assert torch.isfinite(tensor).all()
    assert not torch.isfinite(tensor.sum())  # the fast path cannot decide this one
    assert all_finite(tensor)
    assert find_nonfinite("huge", tensor) is None
    assert find_nonfinite("huge", -tensor) is None


@pytest.mark.parametrize("dtype", FLOATS)
def test_the_exact_search_finds_nothing_in_a_finite_tensor(dtype: torch.dtype) -> None:
    assert locate_nonfinite("w", torch.full((4, 64), 60000.0, dtype=dtype)) is None
    assert locate_nonfinite("w", ramp(dtype)) is None


def test_the_exact_search_crosses_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finite, "_CHUNK", 7)
    tensor = ramp(torch.float16)
    tensor.view(-1)[[20, 21, 2999]] = torch.tensor([NAN, INF, -INF], dtype=torch.float16)
    found = find_nonfinite("w", tensor)
    assert found is not None and (found.count, found.index) == (3, [0, 20])


def test_a_cast_out_of_range_is_named_by_its_source_value() -> None:
    source = ramp(torch.float32)
    source[1, 10] = 1e6
    with pytest.raises(CheckpointError) as caught:
        finite.refuse_nonfinite("w", source.to(torch.float16), source)
    message = str(caught.value)
    assert "w: 1000000.0 at [1, 10] is out of float16's range" in message
    assert "the cast makes it inf; 1 values in all" in message


def test_non_finite_source_values_are_refused() -> None:
    source = ramp(torch.float16)
    source[2, 0] = -INF
    with pytest.raises(CheckpointError, match=r"the source holds 1 non-finite values \(first -inf"):
        finite.refuse_nonfinite("w", source, source)
    finite.refuse_nonfinite("ok", ramp(torch.float16), ramp(torch.float16))
