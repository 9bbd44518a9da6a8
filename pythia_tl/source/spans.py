"""Where a tensor's bytes lie in its weight file (``Span``), and the checks that a span fits the
tensor and the file. ``pythia_tl.source.weight_file`` reads them."""

from __future__ import annotations

from dataclasses import dataclass

from pythia_tl.dtypes import DType


@dataclass(frozen=True)
class Span:
    """Where a tensor's values lie in its file: a storage of ``nbytes`` at byte ``offset``, seen
    through ``stride`` and ``storage_offset`` (in elements), as torch describes a view."""

    offset: int
    nbytes: int
    stride: tuple[int, ...]
    storage_offset: int = 0


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def check_span(span: Span, shape: tuple[int, ...], dtype: DType, file_size: int) -> str | None:
    """Why ``span`` cannot describe a tensor of ``shape`` and ``dtype`` in a file of
    ``file_size`` bytes, or None when it can."""
    if span.offset < 0 or span.nbytes < 0 or span.offset + span.nbytes > file_size:
        return f"bytes [{span.offset}, {span.offset + span.nbytes}) lie outside the file"
    if span.nbytes % dtype.itemsize:
        return f"a storage of {span.nbytes} bytes does not hold whole {dtype} elements"
    if len(span.stride) != len(shape) or span.storage_offset < 0 or min(span.stride, default=0) < 0:
        return f"stride {list(span.stride)} does not fit shape {list(shape)}"
    if 0 in shape:
        return None
    last = span.storage_offset + sum(
        (size - 1) * step for size, step in zip(shape, span.stride, strict=True)
    )
    if (last + 1) * dtype.itemsize > span.nbytes:
        return f"shape {list(shape)} reaches past its storage of {span.nbytes} bytes"
    return None
