"""Weight files read through memory maps, giving pages back once their tensors are used.

A tensor read through a map is a view of the page cache: nothing is copied until a conversion
step or the writer needs the bytes, and the pages come from the kernel on first touch. Touched
pages of a mapping count in the process's resident memory for as long as they stay mapped, so
``release`` drops a byte range from this process (``madvise(MADV_DONTNEED)``; the page cache
keeps the data): resident memory then follows the tensors in use, not the checkpoint's size.

The map is private and copy-on-write, as ``torch.load(mmap=True)`` maps files: a stray in-place
write changes this process's copy only, never the file, and releasing a range that is read
again later only costs a page fault.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl.errors import CheckpointError


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


def check_span(
    span: Span, shape: tuple[int, ...], dtype: torch.dtype, file_size: int
) -> str | None:
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


class MappedFile:
    """One weight file, mapped whole; tensors are views of the map until released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._closed = False
        try:
            with open(path, "rb") as handle:
                self.size = os.fstat(handle.fileno()).st_size
                self._map = (
                    mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if self.size else None
                )
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot map the file ({exc})") from None

    def tensor(self, span: Span, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A view of ``span``'s bytes as a tensor: no copy; it keeps the map alive."""
        if self._closed:
            raise CheckpointError(f"{self.path}: read after its reader was closed")
        if span.offset + span.nbytes > self.size:
            raise CheckpointError(
                f"{self.path}: shrank to {self.size} bytes since its header was read"
            )
        if span.nbytes == 0 or self._map is None:  # nothing to read (an empty tensor or file)
            return torch.empty(shape, dtype=dtype)
        storage = torch.frombuffer(
            self._map, dtype=dtype, count=span.nbytes // dtype.itemsize, offset=span.offset
        )
        return storage.as_strided(shape, span.stride, span.storage_offset)

    def release(self, start: int, end: int) -> None:
        """Drop the pages holding bytes [start, end) from this process (the data stays in the
        page cache and is faulted in again if read again)."""
        if self._map is None or end <= start:
            return
        first = start - start % mmap.PAGESIZE
        last = min(end, self.size)
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        # Dropped, not closed: tensors made by torch.frombuffer hold a reference to the map but no
        # buffer export, so closing it would unmap memory they may still read (another thread may
        # be converting when an error or a signal unwinds the reader). The map is unmapped when
        # the last of them is freed.
        self._closed = True
        self._map = None
