"""NaN and infinity in converted tensors: found chunk by chunk, named by tensor and index.

One rule, used by ``convert`` (on each tensor before it is written) and by ``verify`` (on each
tensor of a file): a non-finite value is refused unless the conversion was asked to allow it,
which the metadata records (``nonfinite``). A float32 value beyond float16's range becomes
infinity when cast, so the check runs on the converted tensor, and names the source value when
the cast made it.

Nearly every tensor is finite, so the check first asks that cheaply: one reduction over the
tensor, allocating nothing the size of it. Any NaN or infinity makes a sum NaN or infinite
(IEEE arithmetic propagates them, whatever the order of the additions), so a finite sum proves
every element finite. A sum that is not finite comes from a NaN or infinity, or from finite
values whose sum overflows the dtype (float16's sum is accumulated in float32 but returned in
float16, beyond whose 65504 it becomes infinity); ``torch.aminmax``, which cannot overflow,
tells those apart, and only a tensor whose smallest or largest value is not finite is searched
element by element for the count and the first index. On the 2-core benchmark machine (one
torch thread, as ``convert`` runs), the sum reads float16, bfloat16 and float32 tensors of
50-500 MB at 7-9 GB/s and aminmax at 5.5-6.5 GB/s, where the chunked ``isfinite`` that had
done it all read 0.3-0.7 GB/s; a sum with ``dtype=torch.float32`` of a float16 tensor casts it
first (0.7 GB/s), and float64 sums are slower still.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pythia_tl.errors import CheckpointError, Param

# Elements per chunk: the mask of one chunk costs 4 MiB at most.
_CHUNK = 1 << 22


@dataclass(frozen=True)
class NonFinite:
    """A tensor's non-finite values: how many, and the first one's index and value."""

    key: str
    count: int
    index: list[int]
    value: float

    def describe(self) -> str:
        return f"{self.key} has {self.count} non-finite values (first {self.value} at {self.index})"


def find_nonfinite(key: str, tensor: torch.Tensor) -> NonFinite | None:
    """None when every value of ``tensor`` is finite (integer tensors always are)."""
    if not tensor.is_floating_point() or all_finite(tensor):
        return None
    return locate_nonfinite(key, tensor)


def locate_nonfinite(key: str, tensor: torch.Tensor) -> NonFinite | None:
    """The exact search, chunk by chunk: how many values are not finite, and the first (None
    when there is none)."""
    flat = tensor.reshape(-1)
    parts = [flat[start : start + _CHUNK] for start in range(0, flat.numel(), _CHUNK)]
    count, first, offset = 0, None, 0
    for part in parts:
        bad = ~torch.isfinite(part)
        found = int(bad.sum())
        if found and first is None:
            first = offset + int(bad.nonzero()[0, 0])
        count += found
        offset += part.numel()
    if first is None:
        return None
    return NonFinite(key, count, _unravel(first, tensor.shape), float(flat[first].item()))


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of the float ``tensor`` is finite, by one reduction over it (two when
    its sum overflows): no mask, no copy."""
    if tensor.numel() == 0 or math.isfinite(float(tensor.sum())):
        return True
    smallest, largest = torch.aminmax(tensor)  # NaN propagates; no overflow
    return math.isfinite(float(smallest)) and math.isfinite(float(largest))


def refuse_nonfinite(key: str, converted: torch.Tensor, before_cast: torch.Tensor) -> None:
    """CheckpointError naming the first non-finite value of ``converted``, and whether the cast
    from ``before_cast`` (the same values in the working dtype) made it."""
    found = find_nonfinite(key, converted)
    if found is None:
        return
    flat = before_cast.reshape(-1)
    original = float(flat[_ravel(found.index, converted.shape)].item())
    dtype = str(converted.dtype).removeprefix("torch.")
    if torch.isfinite(torch.tensor(original)):
        why = (
            f"{key}: {original!r} at {found.index} is out of {dtype}'s range (the cast makes it "
            f"{found.value}; {found.count} values in all)"
        )
    else:
        why = (
            f"{key}: the source holds {found.count} non-finite values (first {original} at "
            f"{found.index})"
        )
    raise CheckpointError(why, "; refused unless ", Param("allow_nonfinite", True))


def _unravel(position: int, shape: torch.Size) -> list[int]:
    return [int(i) for i in torch.unravel_index(torch.tensor(position), shape)]


def _ravel(index: list[int], shape: torch.Size) -> int:
    position = 0
    for i, size in zip(index, shape, strict=True):
        position = position * size + i
    return position
