"""The dtypes pythia-tl knows: one row each, with every name the formats give it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DType:
    """One dtype: its name (as the ``dtype`` option and the metadata spell it), torch's dtype, the
    safetensors header's code and the bytes of one element."""

    name: str
    torch: torch.dtype
    safetensors: str
    itemsize: int

    @property
    def is_float(self) -> bool:
        return self.torch.is_floating_point


DTYPES: tuple[DType, ...] = (
    DType("float64", torch.float64, "F64", 8),
    DType("float32", torch.float32, "F32", 4),
    DType("float16", torch.float16, "F16", 2),
    DType("bfloat16", torch.bfloat16, "BF16", 2),
    DType("int64", torch.int64, "I64", 8),
    DType("int32", torch.int32, "I32", 4),
    DType("int16", torch.int16, "I16", 2),
    DType("int8", torch.int8, "I8", 1),
    DType("uint8", torch.uint8, "U8", 1),
    DType("bool", torch.bool, "BOOL", 1),
)

BY_NAME = {dtype.name: dtype for dtype in DTYPES}
BY_TORCH = {dtype.torch: dtype for dtype in DTYPES}
BY_SAFETENSORS = {dtype.safetensors: dtype for dtype in DTYPES}

# What a converted file may hold (and ``dtype`` may ask for), in the order help texts list them.
OUTPUT_DTYPES: tuple[DType, ...] = (BY_NAME["float32"], BY_NAME["float16"], BY_NAME["bfloat16"])
OUTPUT_DTYPE_NAMES: tuple[str, ...] = tuple(dtype.name for dtype in OUTPUT_DTYPES)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (any torch dtype, known here or not)."""
    known = BY_TORCH.get(dtype)
    return known.name if known is not None else str(dtype).removeprefix("torch.")


def safetensors_code(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"F16"``."""
    return BY_TORCH[dtype].safetensors
