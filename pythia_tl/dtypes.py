"""The dtypes pythia-tl knows: one row each, with every name the formats give it.

Headers, plans and metadata speak in ``DType``; torch is imported only when a torch dtype is asked
for, so commands that convert nothing (``inspect``, ``checkpoints``, ``plan`` of safetensors) never
pay for torch's import.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    """One dtype: its name (as the ``dtype`` option, the metadata and torch spell it), the
    safetensors header's code, and the bytes of one element."""

    name: str
    safetensors: str
    itemsize: int

    @property
    def torch(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.name)
        return dtype

    def __str__(self) -> str:
        return self.name


DTYPES: tuple[DType, ...] = (
    DType("float64", "F64", 8),
    DType("float32", "F32", 4),
    DType("float16", "F16", 2),
    DType("bfloat16", "BF16", 2),
    DType("int64", "I64", 8),
    DType("int32", "I32", 4),
    DType("int16", "I16", 2),
    DType("int8", "I8", 1),
    DType("uint8", "U8", 1),
    DType("bool", "BOOL", 1),
)

BY_NAME = {dtype.name: dtype for dtype in DTYPES}
BY_SAFETENSORS = {dtype.safetensors: dtype for dtype in DTYPES}

FLOAT32 = BY_NAME["float32"]


def dtype_name(safetensors_code: str) -> str:
    """The name of a safetensors header's dtype code (``F16`` -> ``float16``), as ``--dtype``,
    the metadata and ``plan`` spell it; a code pythia-tl does not know stays as it is."""
    known = BY_SAFETENSORS.get(safetensors_code)
    return known.name if known is not None else safetensors_code


# What a converted file may hold (and ``dtype`` may ask for), in the order help texts list them.
OUTPUT_DTYPES: tuple[DType, ...] = (FLOAT32, BY_NAME["float16"], BY_NAME["bfloat16"])
OUTPUT_DTYPE_NAMES: tuple[str, ...] = tuple(dtype.name for dtype in OUTPUT_DTYPES)


@functools.cache
def by_torch() -> dict[torch.dtype, DType]:
    """The table keyed by torch dtype (imports torch)."""
    return {dtype.torch: dtype for dtype in DTYPES}


def of_torch(dtype: torch.dtype) -> DType | None:
    """The row of a torch dtype (None: not one pythia-tl knows)."""
    return by_torch().get(dtype)


def tensor_bytes(dtype: DType, shape: Iterable[int]) -> int:
    """The bytes a contiguous tensor of ``dtype`` and ``shape`` takes."""
    return dtype.itemsize * math.prod(shape)
