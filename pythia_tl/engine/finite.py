"""NaN and infinity in converted tensors: found chunk by chunk, named by tensor and index.

One rule, used by ``convert`` (on each tensor before it is written) and by ``verify`` (on each
tensor of a file): a non-finite value is refused unless the conversion was asked to allow it,
which the metadata records (``nonfinite``). A float32 value beyond float16's range becomes
infinity when cast, so the check runs on the converted tensor, and names the source value when
the cast made it.
"""

from __future__ import annotations

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
    if not tensor.is_floating_point():
        return None
    flat = tensor.reshape(-1)
    parts = [flat[start : start + _CHUNK] for start in range(0, flat.numel(), _CHUNK)]
    if all(bool(torch.isfinite(part).all()) for part in parts):  # the common case, no mask kept
        return None
    count, first, offset = 0, None, 0
    for part in parts:
        bad = ~torch.isfinite(part)
        found = int(bad.sum())
        if found and first is None:
            first = offset + int(bad.nonzero()[0, 0])
        count += found
        offset += part.numel()
    assert first is not None
    return NonFinite(key, count, _unravel(first, tensor.shape), float(flat[first].item()))


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
