"""Reading a remote checkpoint's tensors while their bytes arrive, in file order.

Every byte is fetched once, in the order the files store them, on several connections at once
(``remote.stream``), and each tensor is handed out as soon as its last byte is in. A whole-file
stream is also hashed as it passes, so the Hub's sha256 is checked without the file ever being
stored. Memory: the tensor being filled, at most ``ahead`` bytes of finished tensors waiting for
the reader, and the chunks in flight.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import torch

from pythia_tl.errors import CheckpointError, SourceError
from pythia_tl.hub.remote import ByteRange, coalesce, stream

if TYPE_CHECKING:
    from pythia_tl.source.checkpoint import Checkpoint, TensorInfo

# Ranges closer than this are fetched as one (the bytes between are cheaper than a request).
COALESCE_GAP = 64 << 10


@dataclass
class _Pending:
    """A tensor's bytes being gathered."""

    info: TensorInfo
    start: int
    end: int
    buffer: np.ndarray | None = None
    filled: int = 0


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
        ahead: int = 32 << 20,
    ) -> None:
        self.checkpoint = checkpoint
        infos = [checkpoint.tensors[name] for name in dict.fromkeys(names)]
        for info in infos:
            if info.span is None or info.file not in checkpoint.remote:
                raise CheckpointError(f"{info.file}: {info.name} cannot be read by ranges")
        self._infos = {info.name: info for info in infos}
        self.order: tuple[str, ...] = tuple(read_order(checkpoint, list(self._infos)))
        files = list(dict.fromkeys(self._infos[name].file for name in self.order))
        _refuse_shared_bytes(self.order, self._infos)
        self._whole = whole_files
        remote = [checkpoint.remote[file] for file in files]
        self._ranges = ranges_to_fetch(checkpoint, self.order, whole_files=whole_files)
        self._ahead = ahead
        self._ready: dict[str, torch.Tensor] = {}
        self._waiting_bytes = 0
        self._hashes = {r.name: hashlib.sha256() for r in remote} if whole_files else {}
        self._error: BaseException | None = None
        self._done = False
        self._stop = False
        self._cond = threading.Condition()
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
        self._thread.join()

    def read(self, name: str) -> torch.Tensor:
        with self._cond:
            while name not in self._ready:
                if self._error is not None:
                    raise self._error
                if self._done or self._stop:
                    raise SourceError(f"{self._infos[name].file}: {name} was not streamed")
                self._cond.wait()
            return self._ready[name]

    def release(self, name: str) -> None:
        with self._cond:
            tensor = self._ready.pop(name, None)
            if tensor is not None:
                self._waiting_bytes -= tensor.untyped_storage().nbytes()
            self._cond.notify_all()

    def digests(self) -> dict[str, str]:
        """The sha256 of every file streamed whole (waits for the stream to end)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return {name: digest.hexdigest() for name, digest in self._hashes.items()}

    # --- the stream's side ------------------------------------------------------------------

    def _run(self) -> None:
        pending = sorted(
            (_Pending(info, *_span(info)) for info in self._infos.values()),
            key=lambda p: (p.info.file.as_posix(), p.start),
        )
        by_file: dict[str, list[_Pending]] = {}
        for item in pending:
            by_file.setdefault(self.checkpoint.remote[item.info.file].name, []).append(item)
        try:
            for where, data in stream(self._ranges):
                if self._stopped():
                    return
                if self._whole:
                    self._hashes[where.file.name].update(data)
                self._take(by_file.get(where.file.name, []), where.start, data)
        except BaseException as exc:  # handed to the reader, which raises it in its own thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _take(self, items: list[_Pending], start: int, data: bytes) -> None:
        end = start + len(data)
        while items and items[0].start < end:
            item = items[0]
            if item.end == item.start:  # nothing to gather
                items.pop(0)
                self._hand_over(item)
                continue
            if item.buffer is None:
                # Not zero-filled: every byte is written before the tensor is handed out.
                item.buffer = np.empty(item.end - item.start, dtype=np.uint8)
            lo, hi = max(start, item.start), min(end, item.end)
            chunk = np.frombuffer(data, dtype=np.uint8)
            item.buffer[lo - item.start : hi - item.start] = chunk[lo - start : hi - start]
            item.filled += hi - lo
            if item.filled < item.end - item.start:
                return  # the rest of it is in the next chunks
            items.pop(0)
            self._hand_over(item)

    def _hand_over(self, item: _Pending) -> None:
        info = item.info
        assert info.span is not None
        if item.buffer is not None:
            storage = torch.from_numpy(item.buffer).view(info.dtype.torch)
            tensor = storage.as_strided(info.shape, info.span.stride, info.span.storage_offset)
        else:
            tensor = torch.empty(info.shape, dtype=info.dtype.torch)
        with self._cond:
            # Hold at most one finished tensor beyond ``ahead`` bytes for a slow reader.
            while self._ready and self._waiting_bytes > self._ahead and not self._stop:
                self._cond.wait()
            self._ready[info.name] = tensor
            self._waiting_bytes += item.end - item.start
            self._cond.notify_all()
        item.buffer = None

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
