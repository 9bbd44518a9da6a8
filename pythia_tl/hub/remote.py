"""Files of a Hub revision read by byte ranges, through huggingface_hub's ``HfFileSystem``.

huggingface_hub does every request (its token, endpoint, offline mode, the Hub's redirect to its
storage, and its retries with back-off); this module only decides which ranges to ask for, asks
for them on several connections at once, and puts the pieces back in order. A range is fetched
in chunks, so a connection dropped mid-way costs at most one chunk again.
"""

from __future__ import annotations

import io
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pythia_tl.errors import CheckpointError, SourceError
from pythia_tl.text import first_line

# Bytes per request: large enough that request overhead is small, small enough that a retry
# after a dropped connection repeats little.
CHUNK_BYTES = 4 << 20
# Connections at once, as `hf download` uses.
WORKERS = 8
# Attempts per chunk beyond huggingface_hub's own retries (which cover most transport errors).
_ATTEMPTS = 3


class RemoteFile:
    """One file of one commit of a Hub repository (``sha256``: what the Hub announces)."""

    def __init__(
        self, repo_id: str, commit: str, name: str, size: int, sha256: str | None = None
    ) -> None:
        self.repo_id = repo_id
        self.commit = commit
        self.name = name
        self.size = size
        self.sha256 = sha256

    def __repr__(self) -> str:
        return f"RemoteFile({self.repo_id}@{self.commit[:12]}/{self.name})"

    @property
    def where(self) -> str:
        """How messages name the file."""
        return f"{self.repo_id}@{self.commit[:12]}/{self.name}"

    @property
    def fs_path(self) -> str:
        return f"{self.repo_id}@{quote(self.commit, safe='')}/{self.name}"

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file, in one request (retried if it fails)."""
        end = min(end, self.size)
        if end <= start:
            return b""
        from huggingface_hub.errors import HfHubHTTPError

        problem: Exception = OSError("no attempt made")
        for _ in range(_ATTEMPTS):
            try:
                with _open(self) as handle:
                    handle.seek(start)
                    data: bytes = handle.read(end - start)
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status is not None and status < 500:
                    raise SourceError(
                        f"{self.where}: the Hub answered HTTP {status} for bytes [{start}, {end})"
                    ) from None
                problem = exc
                continue
            except Exception as exc:  # huggingface_hub raises transport errors of several kinds
                problem = exc
                continue
            if len(data) == end - start:
                return data
            problem = OSError(f"got {len(data)} of {end - start} bytes")
        raise SourceError(
            f"{self.where}: reading bytes [{start}, {end}) failed ({first_line(problem)}); "
            "run the command again"
        )


def _open(file: RemoteFile) -> Any:
    from huggingface_hub import HfFileSystem

    # cache_type "none": every read is exactly one ranged request for exactly what is asked.
    return HfFileSystem().open(
        file.fs_path, "rb", block_size=CHUNK_BYTES, cache_type="none", size=file.size
    )


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of ``file``."""

    file: RemoteFile
    start: int
    end: int


def coalesce(ranges: Iterable[ByteRange], gap: int = 0) -> list[ByteRange]:
    """The ranges in the order given (the order they are read in), each merged into the one
    before when it is of the same file and starts within it or at most ``gap`` after it."""
    merged: list[ByteRange] = []
    for r in ranges:
        last = merged[-1] if merged else None
        if last is not None and last.file is r.file and last.start <= r.start <= last.end + gap:
            merged[-1] = ByteRange(r.file, last.start, max(last.end, r.end))
        else:
            merged.append(r)
    return merged


def stream(
    ranges: Sequence[ByteRange], workers: int = WORKERS, ahead: int = WORKERS
) -> Iterator[tuple[ByteRange, bytes]]:
    """The bytes of ``ranges``, in order, as chunks ``(where, data)``; up to ``workers`` requests
    at once and ``ahead`` chunks fetched beyond the one handed out."""
    chunks = [
        ByteRange(r.file, start, min(start + CHUNK_BYTES, r.end))
        for r in ranges
        for start in range(r.start, r.end, CHUNK_BYTES)
    ]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pythia-tl-fetch") as pool:
        pending: deque[tuple[ByteRange, Future[bytes]]] = deque()
        submitted = 0
        try:
            while submitted < len(chunks) or pending:
                while submitted < len(chunks) and len(pending) < ahead:
                    chunk = chunks[submitted]
                    pending.append((chunk, pool.submit(chunk.file.read, chunk.start, chunk.end)))
                    submitted += 1
                chunk, future = pending.popleft()
                yield chunk, future.result()
        finally:
            for _, future in pending:
                future.cancel()


class SparseFile(io.RawIOBase):
    """A seekable read-only view of a remote file of which some ranges were fetched up front;
    reading anywhere else fetches that range (so parsers that seek, such as ``zipfile`` and
    ``torch.load``, work unchanged, at the cost of a request per miss). A miss larger than
    ``max_miss`` bytes is refused: the file's own (untrusted) directory must not make us fetch
    and hold gigabytes."""

    def __init__(
        self,
        file: RemoteFile,
        max_miss: int = 16 << 20,
    ) -> None:
        super().__init__()
        self.file = file
        self.max_miss = max_miss
        self._position = 0
        self._starts: list[int] = []
        self._pieces: list[bytes] = []
        self._lock = threading.Lock()

    def prefetch(self, spans: Iterable[tuple[int, int]], workers: int = WORKERS) -> None:
        """Fetch the byte ranges ``spans`` (start, end) now, several at once."""
        wanted = [(start, end) for start, end in spans if end > start]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for (start, _), data in zip(
                wanted, pool.map(lambda span: self.file.read(*span), wanted), strict=True
            ):
                self._add(start, data)

    def _add(self, start: int, data: bytes) -> None:
        with self._lock:
            at = bisect_right(self._starts, start)
            self._starts.insert(at, start)
            self._pieces.insert(at, data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.file.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._position + len(view), self.file.size)
        if end <= self._position:
            return 0
        data = self._cached(self._position, end)
        if data is None:
            if end - self._position > self.max_miss:
                raise CheckpointError(
                    f"{self.file.where}: asked to read {end - self._position} bytes at byte "
                    f"{self._position} for its headers, more than the {self.max_miss} allowed"
                )
            data = self.file.read(self._position, end)
            self._add(self._position, data)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def _cached(self, start: int, end: int) -> bytes | None:
        with self._lock:
            for index in range(bisect_right(self._starts, start) - 1, -1, -1):
                first, piece = self._starts[index], self._pieces[index]
                if first + len(piece) >= end:
                    return piece[start - first : end - first]
        return None
