"""Files of a Hub revision read by byte ranges, from the storage location each resolves to once.

A ``RemoteFile`` resolves its location through huggingface_hub (``location.Resolver``: one
resolver request per file, again only when the signed location expires) and reads ranges from it
into the caller's memory (``transport.StorageClient``). A range whose connection breaks is asked
for again from the last byte received; the storage host's throttling is waited out (capped).
"""

from __future__ import annotations

import io
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pythia_tl.errors import CheckpointError, SourceError
from pythia_tl.hub.location import Resolver
from pythia_tl.hub.transport import Dropped, Expired, Refused, StorageClient, Throttled

# Ranges closer than this are fetched as one (the bytes between are cheaper than a request).
COALESCE_GAP = 64 << 10
# Connections at once, as `hf download` uses.
WORKERS = 8
# Failed attempts in a row (each without progress) before a range is given up on.
ATTEMPTS = 5
# An attempt that brings at least this much of a range counts as progress.
PROGRESS_BYTES = 1 << 20


class RemoteFile:
    """One file of one commit of a Hub repository (``sha256``: what the Hub announces), read by
    ranges through ``client`` (shared by the files of one revision)."""

    def __init__(
        self,
        repo_id: str,
        commit: str,
        name: str,
        size: int,
        sha256: str | None = None,
        client: StorageClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.repo_id = repo_id
        self.commit = commit
        self.name = name
        self.size = size
        self.sha256 = sha256
        self.client = client if client is not None else StorageClient()
        self.resolver = Resolver(self, sleep)
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"RemoteFile({self.where})"

    @property
    def where(self) -> str:
        """How messages name the file."""
        return f"{self.repo_id}@{self.commit[:12]}/{self.name}"

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file (a small read: headers)."""
        end = min(end, self.size)
        if end <= start:
            return b""
        buffer = bytearray(end - start)
        self.read_into(start, [memoryview(buffer)])
        return bytes(buffer)

    def read_into(
        self, start: int, views: Sequence[memoryview], stop: threading.Event | None = None
    ) -> None:
        """Fill ``views`` in turn with the file's bytes from ``start`` on; ``stop`` set ends
        the read before its next attempt."""
        total = sum(len(view) for view in views)
        if start < 0 or start + total > self.size:
            raise SourceError(
                f"{self.where}: bytes [{start}, {start + total}) lie outside its {self.size} bytes"
            )
        done, failures = 0, 0
        location = self.resolver.location()
        while done < total:
            if stop is not None and stop.is_set():
                raise SourceError(f"{self.where}: the read was stopped")
            rest = _skip(views, done)
            left = total - done
            try:
                done += self.client.read_into(location.url, start + done, rest, self.size)
                continue
            except Refused as exc:
                raise SourceError(
                    f"{self.where}: bytes [{start + done}, {start + total}): {exc.why}"
                ) from None
            except Expired:
                location = self.resolver.renew(location)
                problem: str = "its storage location kept expiring"
                wait = 0.0
            except Throttled as exc:
                problem, wait = exc.why, exc.wait
            except Dropped as exc:
                done += exc.received
                if exc.received >= min(PROGRESS_BYTES, left):
                    failures = 0
                    continue
                problem, wait = exc.why, 0.5 * 2**failures
            failures += 1
            if failures >= ATTEMPTS:
                raise SourceError(
                    f"{self.where}: reading bytes [{start + done}, {start + total}) failed "
                    f"{failures} times ({problem}); run the command again"
                )
            self._sleep(wait)


def _skip(views: Sequence[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    rest = []
    for view in views:
        if count >= len(view):
            count -= len(view)
            continue
        rest.append(view[count:])
        count = 0
    return rest


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
        """Fetch the byte ranges ``spans`` (start, end) now, several at once; spans less than
        ``COALESCE_GAP`` apart are fetched as one (a ``.bin`` file's record headers)."""
        merged = coalesce(
            (ByteRange(self.file, start, end) for start, end in sorted(spans) if end > start),
            COALESCE_GAP,
        )
        wanted = [(r.start, r.end) for r in merged]
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
