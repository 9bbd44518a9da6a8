"""Comparing one tensor of a file with the tensor a fresh conversion gives for it.

Two rules. A tensor that no processing step changed must equal the fresh conversion bit for bit:
the conversion only moves values, and a cast to another dtype is IEEE round-to-nearest-even,
which has exactly one correct result. A tensor that processing changed is float32 arithmetic
whose last bits depend on summation order, so it must match within a tolerance (see
``tolerance_mismatch``). Both work through the tensors in chunks, so that no mask or copy the size
of a whole tensor is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

# Slack for float32 summation order, relative to the tensor's largest magnitude.
FLOAT32_SLACK = 1e-6
_CHUNK = 1 << 22
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


def bitwise_mismatch(key: str, actual: torch.Tensor, expected: torch.Tensor) -> Mismatch | None:
    """None when both tensors hold the same bits (same dtype and shape assumed)."""
    view = _INT_VIEWS[actual.element_size()]
    got, wanted = actual.reshape(-1).view(view), expected.reshape(-1).view(view)
    if torch.equal(got, wanted):  # the common case, compared without a mask the tensor's size
        return None
    return _mismatch(key, actual, expected, (got[part] != wanted[part] for part in chunks(got)))


def tolerance_mismatch(key: str, actual: torch.Tensor, reference: torch.Tensor) -> Mismatch | None:
    """None when every value of ``actual`` is within one unit of its dtype's precision of the
    float32 ``reference`` (``eps * |reference|``), plus FLOAT32_SLACK of the reference's largest
    magnitude; a NaN or infinity differs unless the reference has the same there."""
    ref, got = reference.reshape(-1), actual.reshape(-1)
    largest = max(
        (float(ref[part].abs().nan_to_num(0.0, 0.0, 0.0).max()) for part in chunks(ref)),
        default=0.0,
    )
    eps = torch.finfo(actual.dtype).eps

    def differs(part: slice) -> torch.Tensor:
        wanted = ref[part].to(torch.float32)
        allowed = eps * wanted.abs() + FLOAT32_SLACK * largest
        value = got[part].to(torch.float32)
        # The same infinity, or NaN on both sides (a file that allowed them), is no difference.
        same = (value == wanted) | (value.isnan() & wanted.isnan())
        return ~((value - wanted).abs() <= allowed) & ~same

    return _mismatch(key, actual, reference, (differs(part) for part in chunks(ref)))


def chunks(flat: torch.Tensor) -> list[slice]:
    """Slices of a flat tensor small enough that a mask or copy of one costs little memory."""
    return [slice(start, start + _CHUNK) for start in range(0, flat.numel(), _CHUNK)]


def _mismatch(
    key: str, actual: torch.Tensor, expected: torch.Tensor, masks: Iterable[torch.Tensor]
) -> Mismatch | None:
    """The mismatch described by ``masks``, the chunks of a flat "differs" mask in order."""
    count, first, offset = 0, None, 0
    for mask in masks:
        found = int(mask.sum())
        if found and first is None:
            first = offset + int(mask.nonzero()[0, 0])
        count += found
        offset += mask.numel()
    if first is None:
        return None
    index = [int(i) for i in torch.unravel_index(torch.tensor(first), actual.shape)]
    return Mismatch(
        key=key,
        count=count,
        numel=actual.numel(),
        index=index,
        actual=actual.reshape(-1)[first].item(),
        expected=expected.reshape(-1)[first].item(),
    )
