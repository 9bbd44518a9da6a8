"""Memory for converted tensors, reused once nothing refers to it any more.

A conversion allocates and frees about the checkpoint's size in tensors (twice that for a
float32 output). Fresh memory costs the kernel a page fault and a zero fill per page, and
freeing it unmaps it again; profiling the conversion on the 2-core benchmark machine found those
page faults among its largest costs.

A buffer is lent out as a tensor over a numpy view of it. ``torch.from_numpy`` keeps that view
alive exactly as long as any tensor shares its memory (slices and reshapes included), so a weak
reference to the view tells when the buffer is free: nothing that still uses a tensor can see
its memory reused.

Only tensors up to ``largest`` bytes are pooled, and the pool holds at most ``limit`` bytes; a
larger request (an embedding) first lets go of every free buffer, so that peak memory stays
bounded by the largest tensors, not by the pool.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch

# Small tensors come cheaply from malloc's free lists already.
_SMALLEST = 1 << 20


@dataclass(eq=False)
class _Buffer:
    memory: np.ndarray
    lent: weakref.ref[np.ndarray] | None = None

    @property
    def free(self) -> bool:
        return self.lent is None or self.lent() is None


class BufferPool:
    """Reusable memory for tensors of up to ``largest`` bytes, at most ``limit`` bytes in all.

    Meant for one thread: the one that calls ``empty``.
    """

    def __init__(self, largest: int, limit: int) -> None:
        self.largest = largest
        self.limit = limit
        self._buffers: list[_Buffer] = []

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor, in reused memory when the pool has some."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < _SMALLEST:
            return torch.empty(shape, dtype=dtype)
        if nbytes > self.largest:
            self._drop_free(keep=0)
            return torch.empty(shape, dtype=dtype)
        buffer = self._free_buffer(nbytes) or self._new_buffer(nbytes)
        if buffer is None:
            return torch.empty(shape, dtype=dtype)
        view = buffer.memory[:nbytes]
        buffer.lent = weakref.ref(view)
        return torch.from_numpy(view).view(dtype).view(shape)

    def let_go(self) -> None:
        """Free every buffer not in use (before a large allocation that is not pooled)."""
        self._drop_free(keep=0)

    @property
    def held(self) -> int:
        return sum(buffer.memory.nbytes for buffer in self._buffers)

    def _free_buffer(self, nbytes: int) -> _Buffer | None:
        fitting = [b for b in self._buffers if b.free and b.memory.nbytes >= nbytes]
        return min(fitting, key=lambda b: b.memory.nbytes, default=None)

    def _new_buffer(self, nbytes: int) -> _Buffer | None:
        self._drop_free(keep=self.limit - nbytes)
        if self.held + nbytes > self.limit:
            return None  # everything held is in use: this one is not pooled
        buffer = _Buffer(np.empty(nbytes, dtype=np.uint8))
        self._buffers.append(buffer)
        return buffer

    def _drop_free(self, keep: int) -> None:
        """Let go of free buffers, largest first, until the pool holds at most ``keep`` bytes."""
        for buffer in sorted(self._buffers, key=lambda b: -b.memory.nbytes):
            if self.held <= keep:
                return
            if buffer.free:
                self._buffers.remove(buffer)
