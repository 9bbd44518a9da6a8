"""Opening a checkpoint's tensors for a conversion or a verification, with the source hashed
as it is read: one pipeline for both."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch

from pythia_tl.engine.buffers import BufferPool
from pythia_tl.engine.hashing import SourceHashes, check_sha256
from pythia_tl.engine.pipeline import Reader
from pythia_tl.errors import SourceError
from pythia_tl.hub.stream_reader import StreamReader
from pythia_tl.mapping.plan import ConversionPlan, PlannedSource
from pythia_tl.source.checkpoint import Checkpoint
from pythia_tl.source.reader import TensorReader
from pythia_tl.source.weight_file import WeightFile


def open_source(
    stack: ExitStack,
    checkpoint: Checkpoint,
    plan: ConversionPlan,
    expected_sha256: Mapping[str, str],
    *,
    whole: bool,
) -> tuple[Reader, list[PlannedSource] | None, Callable[[], dict[str, str]]]:
    """The reader of the plan's sources, the order to read them in (None: plan order), and
    the source files' checked sha256 (called once every tensor is read).

    A local checkpoint is read by byte ranges, in plan order, and hashed on a second
    thread. A remote one is streamed in the order its files store the tensors, nothing of it
    written to disk: ``whole`` files, hashed as the bytes pass, or only the plan's byte ranges,
    whose files' sha256 are then the ones the Hub announces (no file is read whole to check
    them).
    """
    if not checkpoint.is_remote:
        hashes = stack.enter_context(SourceHashes(checkpoint.files))
        reader = stack.enter_context(ReusingReader(checkpoint, plan))
        return reader, None, lambda: hashes.checked(expected_sha256)
    names = [source.name for source in plan.sources if source.name is not None]
    stream = stack.enter_context(StreamReader(checkpoint, names, whole_files=whole))
    rank = {name: index for index, name in enumerate(stream.order)}
    # Sources made from nothing (unembed.b_U) first: their part is then complete sooner.
    order = sorted(plan.sources, key=lambda s: rank[s.name] if s.name else -1)
    if not whole:
        return stream, order, lambda: _announced(checkpoint, expected_sha256)
    return stream, order, lambda: check_sha256(stream.digests(), expected_sha256)


def computes_sha256(checkpoint: Checkpoint, *, whole: bool) -> bool:
    """Whether ``open_source`` hashes the source's files (else it takes the Hub's announced
    sha256: a partial read of a remote checkpoint)."""
    return whole or not checkpoint.is_remote


def _announced(checkpoint: Checkpoint, expected_sha256: Mapping[str, str]) -> dict[str, str]:
    missing = [file.name for file in checkpoint.files if file.name not in expected_sha256]
    if missing:
        raise SourceError(
            f"{checkpoint.files[0].parent}: the Hub announces no sha256 for {missing[0]}, which a "
            "partial conversion records instead of hashing the whole file"
        )
    return {file.name: expected_sha256[file.name] for file in checkpoint.files}


class ReusingReader:
    """A local checkpoint's tensors, each read by its byte range into memory reused from one
    tensor to the next (``TensorReader`` gives each fresh memory of its own). For one thread:
    the pipeline's worker.

    Fresh memory for every tensor was the largest cost of reading when profiled on the 2-core
    benchmark machine: the kernel faults in and zero-fills each page as ``preadv`` fills it, and
    unmapping it again interrupts the process's other threads (TLB shootdowns). Reading a
    pythia-1.4b ``.bin`` took 2.4 s of system time so, 0.75 s into reused memory.

    The pipeline copies each tensor out of its buffer (``owned``) before it reads the next, so
    one buffer serves every block tensor. Tensors up to half the largest are pooled, and the pool
    holds at most that much; a larger read (an embedding) first lets the pool's free memory go
    and is ``TensorReader``'s, as are spanless ``.bin`` tensors. A span is read by its file's
    ``WeightFile``: the same checks and messages for a file that shrinks or fails to read.
    """

    def __init__(self, checkpoint: Checkpoint, plan: ConversionPlan) -> None:
        self.checkpoint = checkpoint
        self._reader = TensorReader(checkpoint)
        self._files: dict[Path, WeightFile] = {}
        self._closed = False
        half = max((planned.nbytes for planned in plan.tensors), default=0) // 2
        self._pool = BufferPool(largest=half, limit=half)

    def __enter__(self) -> ReusingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._reader.close()
        for file in self._files.values():
            file.close()
        self._files.clear()

    def read(self, name: str) -> torch.Tensor:
        """``name``'s tensor, in memory reused once no tensor refers to it any more: convert it
        into new tensors, never change it in place."""
        info = self.checkpoint.tensors[name]
        span = info.span
        if self._closed or span is None or not span.nbytes or info.file in self.checkpoint.remote:
            return self._reader.read(name)  # which refuses a read after close, a remote file
        if span.nbytes > self._pool.largest:
            self._pool.let_go()
            return self._reader.read(name)
        file = self._files.get(info.file)
        if file is None:
            file = self._files[info.file] = WeightFile(info.file)
        memory = self._pool.empty((span.nbytes,), torch.uint8)
        file._read_into(memory.numpy().data, span.offset)
        return memory.view(info.dtype.torch).as_strided(
            info.shape, span.stride, span.storage_offset
        )

    def release(self, name: str) -> None:
        """Nothing to do: a buffer is reused once the last tensor made from it is freed."""
