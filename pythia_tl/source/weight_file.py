"""A weight file read by byte ranges into memory of our own.

The file is not memory-mapped: a mapped file that shrinks (another process truncates or rewrites
it while we convert) kills the process with SIGBUS when a page past its new end is touched, which
no Python code can catch. Reading with ``preadv`` instead turns a short file into a short read,
reported as one line, and each tensor costs one copy from the page cache into a buffer that lives
exactly as long as the tensors made from it.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import torch

from pythia_tl.dtypes import DType
from pythia_tl.errors import CheckpointError
from pythia_tl.source.spans import Span

# Bytes per read call: small enough that a signal is handled promptly between calls.
_READ_BYTES = 64 << 20


class WeightFile:
    """One weight file, open for reading tensors by their spans."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot open ({exc.strerror or exc})") from None
        # Held around each read and by close: the reader may be closed (an error or a signal
        # unwinding) while a worker thread is still reading, and a closed descriptor's number
        # can be reused by the next file opened.
        self._lock = threading.Lock()

    def tensor(self, span: Span, shape: tuple[int, ...], dtype: DType) -> torch.Tensor:
        """A tensor of ``span``'s bytes, read into a buffer of its own."""
        if not span.nbytes:
            return torch.empty(shape, dtype=dtype.torch)
        # Anonymous memory of its own, unmapped when the last tensor using it is freed: from
        # malloc, freed tensors of tens of MB stay in the heap and peak memory creeps up.
        memory = mmap.mmap(-1, span.nbytes)
        with memoryview(memory) as view:
            self._read_into(view, span.offset)
        storage = torch.frombuffer(memory, dtype=torch.uint8)
        return storage.view(dtype.torch).as_strided(shape, span.stride, span.storage_offset)

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            try:
                with self._lock:
                    if self._fd is None:
                        raise CheckpointError(f"{self.path}: read after its reader was closed")
                    n = os.preadv(self._fd, [buffer[done : done + _READ_BYTES]], offset + done)
            except OSError as exc:
                raise CheckpointError(f"{self.path}: read failed ({exc.strerror or exc})") from None
            if n == 0:
                raise CheckpointError(
                    f"{self.path}: ends at byte {offset + done}, before the {len(buffer)} bytes "
                    f"of a tensor at byte {offset}; the file changed while it was read"
                )
            done += n

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
