"""Reading a remote checkpoint's tensors while their bytes arrive, in file order.

Every byte is fetched once, in the order the files store them, on several connections at once,
straight into the memory the tensor will own (``RemoteFile.read_into``): no copy, no ``bytes``
per chunk. Each range is cut into pieces of ``PIECE_BYTES``, up to ``IN_FLIGHT`` of them asked
for at once; as pieces complete, in order, a whole-file stream hashes them where they lie (so
the Hub's sha256 is checked without the file ever being stored) and each tensor is handed out
once its last piece is in. Bytes between the tensors (headers, skipped buffers) go to scratch
memory, hashed and dropped.

Memory: the tensors the reader holds, plus at most ``ahead`` bytes of tensors and scratch
allocated ahead of it (more only by the piece being made, when a tensor alone is larger).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import torch

from pythia_tl.engine.buffers import BufferPool
from pythia_tl.errors import CheckpointError, SourceError
from pythia_tl.hub.remote import COALESCE_GAP, WORKERS, ByteRange, RemoteFile, coalesce

if TYPE_CHECKING:
    from pythia_tl.source.checkpoint import Checkpoint, TensorInfo

# Bytes per request: a request costs a round trip, so pieces are large; a dropped connection
# resumes from the last byte received, so a large piece repeats nothing.
PIECE_BYTES = 16 << 20
# Requests asked for at once: the connections' worth, and as many queued behind them.
IN_FLIGHT = 2 * WORKERS
# Bytes allocated ahead of the reader: enough in flight to fill a 1 GB/s link 50 ms away.
AHEAD_BYTES = 96 << 20


@dataclass
class _Tensor:
    """A tensor's bytes being gathered: ``[start, end)`` of its file."""

    info: TensorInfo
    start: int
    end: int
    buffer: torch.Tensor | None = None  # uint8, of the tensor's bytes


@dataclass
class _Piece:
    """One request: ``[start, end)`` of ``file`` read into ``views`` in turn."""

    file: RemoteFile
    start: int
    views: list[memoryview]
    # Scratch bytes it holds (released when it completes).
    allocated: int
    finished: list[_Tensor] = field(default_factory=list)


class StreamReader:
    """Reads ``names`` of a remote ``checkpoint`` in the order its files store them.

    ``whole_files``: fetch every byte of the files (and hash them, see ``digests``); otherwise
    only the tensors' own byte ranges (neighbours coalesced). ``read`` blocks until the tensor's
    bytes are in; tensors must be read in ``order``.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        names: Iterable[str],
        *,
        whole_files: bool,
        ahead: int = AHEAD_BYTES,
    ) -> None:
        self.checkpoint = checkpoint
        infos = [checkpoint.tensors[name] for name in dict.fromkeys(names)]
        for info in infos:
            if info.span is None or info.file not in checkpoint.remote:
                raise CheckpointError(f"{info.file}: {info.name} cannot be read by ranges")
        self._infos = {info.name: info for info in infos}
        self.order: tuple[str, ...] = tuple(read_order(checkpoint, list(self._infos)))
        _refuse_shared_bytes(self.order, self._infos)
        self._whole = whole_files
        self._ranges = ranges_to_fetch(checkpoint, self.order, whole_files=whole_files)
        self._files = list(dict.fromkeys(r.file for r in self._ranges))
        self._ahead = ahead
        # Memory for the tensors, reused once the reader has let go of them: fresh memory costs
        # the kernel a zero fill per page (11 % of a streamed pythia-12b conversion's CPU time,
        # profiled). Up to half the largest (all but the embeddings), two at a time: the one
        # being converted and the one arriving. While an embedding is held, the pool holds no
        # free memory (peak memory stays bounded by the largest tensors). The pool is shared by
        # the stream's thread and the reader's, under ``_cond``.
        half = max((info.span.nbytes for info in infos if info.span is not None), default=0) // 2
        self._pool = BufferPool(largest=half, limit=2 * half)
        self._unpooled: set[str] = set()
        self._ready: dict[str, torch.Tensor] = {}
        # Bytes allocated for tensors not yet read, and for scratch not yet hashed.
        self._unread = 0
        self._unread_by_name: dict[str, int] = {}
        self._hashes = {f.name: hashlib.sha256() for f in self._files} if whole_files else {}
        self._error: BaseException | None = None
        self._done = False
        self._stop = False
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pythia-tl-stream", daemon=True)
        self._thread.start()

    # --- the reader's side ------------------------------------------------------------------

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
        self._stopping.set()
        for client in {id(f.client): f.client for f in self._files}.values():
            client.close()  # the requests under way end at once
        self._thread.join()

    def read(self, name: str) -> torch.Tensor:
        with self._cond:
            while name not in self._ready:
                if self._error is not None:
                    raise self._error
                if self._done or self._stop:
                    raise SourceError(f"{self._infos[name].file}: {name} was not streamed")
                self._cond.wait()
            self._unread -= self._unread_by_name.pop(name, 0)
            self._cond.notify_all()
            return self._ready[name]

    def release(self, name: str) -> None:
        with self._cond:
            self._ready.pop(name, None)
            self._unpooled.discard(name)
            if self._unpooled:
                self._pool.let_go()

    def digests(self) -> dict[str, str]:
        """The sha256 of every file streamed whole (waits for the stream to end)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return {name: digest.hexdigest() for name, digest in self._hashes.items()}

    # --- the stream's side ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with ThreadPoolExecutor(WORKERS, thread_name_prefix="pythia-tl-fetch") as pool:
                in_flight: deque[tuple[_Piece, Future[None]]] = deque()
                try:
                    for piece in self._pieces(in_flight):
                        if self._stopped():
                            return
                        future = pool.submit(
                            piece.file.read_into, piece.start, piece.views, self._stopping
                        )
                        in_flight.append((piece, future))
                        while len(in_flight) >= IN_FLIGHT:
                            self._complete(*in_flight.popleft())
                    while in_flight:
                        self._complete(*in_flight.popleft())
                finally:
                    for _, future in in_flight:
                        future.cancel()
        except BaseException as exc:  # handed to the reader, which raises it in its own thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _pieces(self, in_flight: deque[tuple[_Piece, Future[None]]]) -> Iterator[_Piece]:
        """The requests to make, in file order; each tensor's memory is allocated (within the
        budget, completing earlier pieces to make room) when its first piece is made."""
        tensors = deque(
            _Tensor(info, *_span(info)) for info in (self._infos[n] for n in self.order)
        )
        for item in [t for t in tensors if t.end == t.start]:  # nothing to fetch
            self._hand_over(item)
        pending = deque(t for t in tensors if t.end > t.start)
        for r in self._ranges:
            for start in range(r.start, r.end, PIECE_BYTES):
                end = min(start + PIECE_BYTES, r.end)
                piece = _Piece(r.file, start, [], 0)
                at = start
                while at < end:
                    head = pending[0] if pending else None
                    if head is not None and self._file_of(head) is not r.file:
                        head = None
                    if head is not None and head.start <= at:
                        if head.buffer is None:
                            self._make_room(head.end - head.start, in_flight)
                            head.buffer = self._buffer(head)
                            self._count(head.info.name, head.end - head.start)
                        stop = min(end, head.end)
                        view = memoryview(head.buffer.numpy().data)
                        piece.views.append(view[at - head.start : stop - head.start])
                        if stop == head.end:
                            piece.finished.append(pending.popleft())
                    else:
                        stop = min(end, head.start) if head is not None else end
                        self._make_room(stop - at, in_flight)
                        piece.views.append(memoryview(bytearray(stop - at)))
                        piece.allocated += stop - at
                        self._count(None, stop - at)
                    at = stop
                yield piece

    def _buffer(self, item: _Tensor) -> torch.Tensor:
        size = item.end - item.start
        with self._cond:
            if size > self._pool.largest:
                self._unpooled.add(item.info.name)
            return self._pool.empty((size,), torch.uint8)

    def _file_of(self, item: _Tensor) -> RemoteFile:
        return self.checkpoint.remote[item.info.file]

    def _make_room(self, size: int, in_flight: deque[tuple[_Piece, Future[None]]]) -> None:
        """Wait until ``size`` more bytes fit in the budget: for requests under way to complete,
        or for the reader to take the tensors that are ready. When neither can free anything
        (what is held waits on the piece being made), go on."""
        while True:
            with self._cond:
                if self._stop:
                    raise SourceError("the stream was stopped")
                if self._unread + size <= self._ahead:
                    return
                if not in_flight:
                    if not any(name in self._ready for name in self._unread_by_name):
                        return
                    self._cond.wait()
                    continue
            self._complete(*in_flight.popleft())

    def _count(self, name: str | None, size: int) -> None:
        with self._cond:
            self._unread += size
            if name is not None:
                self._unread_by_name[name] = size

    def _complete(self, piece: _Piece, future: Future[None]) -> None:
        future.result()
        if self._whole:
            digest = self._hashes[piece.file.name]
            for view in piece.views:
                digest.update(view)
        if piece.allocated:
            with self._cond:
                self._unread -= piece.allocated
                self._cond.notify_all()
        for item in piece.finished:
            self._hand_over(item)

    def _hand_over(self, item: _Tensor) -> None:
        info = item.info
        assert info.span is not None
        if item.buffer is not None:
            storage = item.buffer.view(info.dtype.torch)
            tensor = storage.as_strided(info.shape, info.span.stride, info.span.storage_offset)
        else:
            tensor = torch.empty(info.shape, dtype=info.dtype.torch)
        item.buffer = None
        with self._cond:
            if not self._stop:
                self._ready[info.name] = tensor
            self._cond.notify_all()

    def _stopped(self) -> bool:
        with self._cond:
            return self._stop


def ranges_to_fetch(
    checkpoint: Checkpoint, names: Sequence[str], *, whole_files: bool
) -> list[ByteRange]:
    """The byte ranges a stream of ``names`` fetches: their files whole, or their own bytes
    with neighbours coalesced."""
    infos = [checkpoint.tensors[name] for name in read_order(checkpoint, names)]
    if whole_files:
        files = dict.fromkeys(checkpoint.remote[info.file] for info in infos)
        return [ByteRange(file, 0, file.size) for file in files]
    spans = (ByteRange(checkpoint.remote[info.file], *_span(info)) for info in infos)
    return coalesce(spans, COALESCE_GAP)


def _span(info: TensorInfo) -> tuple[int, int]:
    assert info.span is not None
    return info.span.offset, info.span.offset + info.span.nbytes


def _refuse_shared_bytes(order: Sequence[str], infos: dict[str, TensorInfo]) -> None:
    for before, after in pairwise(order):
        a, b = infos[before], infos[after]
        if a.file == b.file and _span(b)[0] < _span(a)[1]:
            raise CheckpointError(
                f"{a.file}: tensors {a.name} and {b.name} share bytes; download the revision "
                "to convert it"
            )


def read_order(checkpoint: Checkpoint, names: Sequence[str]) -> list[str]:
    """``names`` in the order their bytes are stored (file by file)."""
    files = {file: index for index, file in enumerate(checkpoint.files)}
    return sorted(
        names,
        key=lambda n: (files[checkpoint.tensors[n].file], _span(checkpoint.tensors[n])[0]),
    )
