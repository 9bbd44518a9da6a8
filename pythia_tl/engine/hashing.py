"""The sha256 of a checkpoint's files, computed on a second thread while the first converts.

Conversion and verification both hash the source as they read it: the digests go into the
output's metadata (convert) or are compared with it (verify).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from pythia_tl.errors import SourceError

_CHUNK = 1 << 20


class HashingStopped(Exception):
    """The hashing was asked to stop before it finished."""


def file_sha256(path: Path, stop: threading.Event | None = None) -> str:
    """The file's sha256; HashingStopped as soon as ``stop`` is set (checked at every chunk)."""
    # One small buffer, refilled: the bytes are still in the CPU's cache when hashed, which makes
    # hashing ~40% cheaper than reading fresh 16 MB chunks (see benchmarks/RESULTS.md).
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as handle:
            while size := handle.readinto(buffer):
                if stop is not None and stop.is_set():
                    raise HashingStopped(path)
                digest.update(view[:size])
    except OSError as exc:  # named as the source's failure, not the output being written
        raise SourceError(f"{path}: cannot read for its sha256 ({exc.strerror or exc})") from None
    return digest.hexdigest()


class SourceHashes:
    """Hashes ``files`` (by file name) in the background from the moment the block starts; when
    the block ends early (an error, Ctrl-C), the hashing stops within one chunk."""

    def __init__(self, files: Iterable[Path]) -> None:
        self._files = tuple(files)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pythia-tl-hash")
        self._futures: dict[str, Future[str]] = {}
        self._stop = threading.Event()

    def __enter__(self) -> SourceHashes:
        self._futures = {
            file.name: self._pool.submit(file_sha256, file, self._stop) for file in self._files
        }
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for future in self._futures.values():
            future.cancel()
        self._pool.shutdown(wait=True)

    def digests(self) -> dict[str, str]:
        """Every file's sha256 (waits for the hashing to finish)."""
        return {name: future.result() for name, future in self._futures.items()}

    def checked(self, expected: Mapping[str, str]) -> dict[str, str]:
        """``digests()``, each checked against the sha256 ``expected`` for it."""
        return check_sha256(
            self.digests(),
            expected,
            "the cached download is corrupt (delete it from the cache and retry)",
        )


def check_sha256(
    digests: dict[str, str],
    expected: Mapping[str, str],
    why: str = "the bytes changed on the way; run the command again",
) -> dict[str, str]:
    """``digests``, each checked against what the Hub announced for the file (huggingface_hub
    does not check what it serves)."""
    for name, digest in digests.items():
        announced = expected.get(name)
        if announced is not None and digest != announced:
            raise SourceError(
                f"{name}: sha256 {digest} differs from the {announced} the Hub announced; {why}"
            )
    return digests
