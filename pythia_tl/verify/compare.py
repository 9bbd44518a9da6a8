"""Comparing one tensor of a file with the tensor a fresh conversion gives for it.

Two rules. A tensor that no processing step changed must equal the fresh conversion bit for bit:
the conversion only moves values, and a cast to another dtype is IEEE round-to-nearest-even,
which has exactly one correct result. A tensor that processing changed is float32 arithmetic
whose last bits depend on summation order, so it must match within ``processed_tolerance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Slack for float32 summation order, relative to the tensor's largest magnitude.
FLOAT32_SLACK = 1e-6
_INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Mismatch:
    """Where a file's tensor departs from the fresh conversion."""

    key: str
    count: int
    numel: int
    index: list[int]
    actual: float
    expected: float

    def describe(self) -> str:
        return (
            f"{self.key}: {self.count} of {self.numel} values differ (first at {self.index}: "
            f"file has {self.actual!r}, the source gives {self.expected!r})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.key,
            "values_differing": self.count,
            "values": self.numel,
            "first_index": self.index,
            "file_value": self.actual,
            "expected_value": self.expected,
        }


def processed_tolerance(reference: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-value allowed difference: one unit of ``dtype``'s precision at the value (the cast's
    rounding plus room for float32 noise), plus FLOAT32_SLACK of the largest magnitude."""
    magnitude = reference.abs()
    largest = magnitude.max() if magnitude.numel() else magnitude.new_zeros(())
    return torch.finfo(dtype).eps * magnitude + FLOAT32_SLACK * largest


def bitwise_mismatch(key: str, actual: torch.Tensor, expected: torch.Tensor) -> Mismatch | None:
    """None when both tensors hold the same bits (same dtype and shape assumed)."""
    view = _INT_VIEWS[actual.element_size()]
    differs = actual.reshape(-1).view(view) != expected.reshape(-1).view(view)
    return _mismatch(key, actual, expected, differs)


def tolerance_mismatch(key: str, actual: torch.Tensor, reference: torch.Tensor) -> Mismatch | None:
    """None when every value of ``actual`` is within ``processed_tolerance`` of the float32
    ``reference``; a NaN anywhere differs."""
    ref = reference.to(torch.float32).reshape(-1)
    got = actual.to(torch.float32).reshape(-1)
    allowed = processed_tolerance(ref, actual.dtype)
    differs = ~((got - ref).abs() <= allowed)
    return _mismatch(key, actual, reference, differs)


def _mismatch(
    key: str, actual: torch.Tensor, expected: torch.Tensor, differs: torch.Tensor
) -> Mismatch | None:
    count = int(differs.sum())
    if count == 0:
        return None
    flat = int(differs.nonzero()[0, 0])
    index = [int(i) for i in torch.unravel_index(torch.tensor(flat), actual.shape)]
    return Mismatch(
        key=key,
        count=count,
        numel=actual.numel(),
        index=index,
        actual=actual.reshape(-1)[flat].item(),
        expected=expected.reshape(-1)[flat].item(),
    )
