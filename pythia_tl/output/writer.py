"""A streaming, atomic safetensors writer.

safetensors' own ``save_file`` needs every tensor in memory at once (its maintainers declined an
incremental writer), which would bound peak memory by the model instead of its largest tensor.
So the header's size is reserved up front from the planned shapes, the data streamed after it
tensor by tensor, and the header itself written last, once the metadata (which records hashes
computed while converting) is final. The file is published by ``atomic_path``.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from pythia_tl.errors import OutputError
from pythia_tl.formats.safetensors import LENGTH_BYTES, TensorEntry, encode_header
from pythia_tl.output.atomic import (
    atomic_path,
    check_target,
    remove_stale_temporaries,
)

_HEADER_SLACK = 512
_WRITE_BYTES = 1 << 20
# Bytes written (in order from the start) before the write-behind thread is woken again.
_FLUSH_BYTES = 64 << 20


def output_size(entries: Sequence[TensorEntry], reserve_metadata: Mapping[str, str]) -> int:
    """The size of the file ``write_safetensors`` writes for ``entries``."""
    return LENGTH_BYTES + _header_size(entries, reserve_metadata) + _data_size(entries)


def _header_size(entries: Sequence[TensorEntry], reserve_metadata: Mapping[str, str]) -> int:
    return len(encode_header(entries, reserve_metadata)) + _HEADER_SLACK


def _data_size(entries: Sequence[TensorEntry]) -> int:
    return sum(entry.nbytes for entry in entries)


def write_safetensors(
    target: Path,
    entries: Sequence[TensorEntry],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Callable[[], Mapping[str, str]],
    reserve_metadata: Mapping[str, str],
    *,
    overwrite: bool = False,
    on_bytes: Callable[[int, int], None] | None = None,
) -> int:
    """Stream ``tensors`` (``(name, tensor)`` for every entry, in any order) into ``target``;
    returns the file's size.

    ``reserve_metadata`` must be at least as long, once encoded, as what ``metadata()`` returns
    after the last tensor: its size fixes where the data starts. ``on_bytes(n, total)`` is called
    after each tensor with its size and the total size of all tensors.
    """
    check_target(target, overwrite)
    header_size, total = _header_size(entries, reserve_metadata), _data_size(entries)
    remove_stale_temporaries(target.parent)
    try:
        with atomic_path(target, overwrite=overwrite) as temp:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
            except OSError as exc:
                raise OutputError(
                    f"{target}: cannot create a file there ({_reason(exc)})"
                ) from None
            with open(fd, "wb", buffering=0, closefd=True) as out:
                _write_body(out, entries, tensors, LENGTH_BYTES + header_size, total, on_bytes)
                header = encode_header(entries, metadata(), header_size)
                out.seek(0)
                _write_all_bytes(out, len(header).to_bytes(LENGTH_BYTES, "little") + header)
                os.fsync(out.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"{target}: no space left on device for the "
                f"{LENGTH_BYTES + header_size + total:,}"
                "-byte output (the partial file was removed)"
            ) from None
        raise OutputError(f"{target}: write failed ({_reason(exc)})") from None
    return LENGTH_BYTES + header_size + total


def _write_body(
    out: BinaryIO,
    entries: Sequence[TensorEntry],
    tensors: Iterable[tuple[str, torch.Tensor]],
    start: int,
    total: int,
    on_bytes: Callable[[int, int], None] | None,
) -> None:
    places: dict[str, tuple[TensorEntry, int]] = {}
    offset = start
    for entry in entries:
        places[entry.name] = (entry, offset)
        offset += entry.nbytes
    out.seek(start)
    written = flushed = start  # the end of what has been written in order from the start
    behind = _WriteBehind(out.fileno())
    try:
        for name, tensor in tensors:
            if name not in places:
                raise ValueError(f"{name}: not planned, or written twice")
            entry, at = places.pop(name)
            if tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype.torch:
                raise ValueError(
                    f"{entry.name}: got {tensor.dtype} {list(tensor.shape)}, planned "
                    f"{entry.dtype} {list(entry.shape)}"
                )
            if at != out.tell():
                out.seek(at)
            _write_all(out, tensor)
            if at == written:
                written += entry.nbytes
                if written - flushed >= _FLUSH_BYTES:
                    behind.advance(written)
                    flushed = written
            if on_bytes is not None:
                on_bytes(entry.nbytes, total)
            del tensor
    except BaseException:
        behind.stop(raising=False)  # the loop's own error is the one to report
        raise
    behind.stop()
    if places:
        missing = next(iter(places))
        raise ValueError(f"{missing}: planned but never written ({len(places)} missing)")


# fdatasync skips metadata the data does not need (the modification time); not on every system.
_fdatasync = getattr(os, "fdatasync", os.fsync)


class _WriteBehind:
    """Puts the bytes written so far on disk from a thread of its own, while the rest is
    converted and written, and lets the page cache drop them once they are there.

    Without it the kernel begins writing only once many dirty pages have piled up, and the
    final fsync waits for most of the file. Each round is an ``fdatasync`` of everything written
    so far, then ``POSIX_FADV_DONTNEED`` on the part now on disk (which keeps a long batch from
    filling the page cache with outputs nobody reads). Both wait for the disk: on the writing
    thread (``POSIX_FADV_DONTNEED`` alone, which starts write-back as well) they cost a
    pythia-1.4b conversion 1.1 s on the 2-core benchmark machine, and its final fsync still
    waited about a second for the virtual disk to flush. A round starts once the previous one
    has ended and ``advance`` has moved the end on, so a slow disk gets fewer, larger rounds.

    The writer's own fsync at the end is what makes the file durable. An error met here is
    raised in the writer: the kernel reports a failed write-back once, to whichever sync call
    comes first, so it must not be lost on this thread.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake = threading.Condition()
        self._end = 0  # of the bytes written in order from the start of the file
        self._stopping = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def advance(self, end: int) -> None:
        """Bytes [0, end) are written: put them on disk. Raises an error the thread met."""
        with self._wake:
            if self._error is not None:
                raise self._error
            self._end = end
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pythia-tl-write-behind", daemon=True
            )
            self._thread.start()

    def stop(self, *, raising: bool = True) -> None:
        """Wait for the round under way to end (none starts after it); then raise the error
        the thread met, if any (unless not ``raising``)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        if raising and self._error is not None:
            raise self._error

    def _run(self) -> None:
        done = 0
        while True:
            with self._wake:
                while not self._stopping and self._end <= done:
                    self._wake.wait()
                if self._stopping:
                    return
                end = self._end
            try:
                _fdatasync(self._fd)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self._fd, done, end - done, os.POSIX_FADV_DONTNEED)
            except OSError as exc:
                with self._wake:
                    self._error = exc
                return
            done = end


def _write_all(out: BinaryIO, tensor: torch.Tensor) -> None:
    # A uint8 view of the contiguous tensor goes to the kernel as one buffer, with no Python copy.
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    _write_all_bytes(out, memoryview(data.data))


def _write_all_bytes(out: BinaryIO, data: bytes | memoryview) -> None:
    # Slices of the buffer, not one call per tensor: on the 2-core benchmark machine, writing a
    # pythia-2.8b conversion in 1 MiB calls took about half the kernel time of one call per
    # tensor (up to 257 MB), while a worker thread converts alongside (benchmarks/run.py).
    view = memoryview(data).cast("B")
    while view:
        n = out.write(view[:_WRITE_BYTES])
        view = view[n:]


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)
