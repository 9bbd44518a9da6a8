"""Byte ranges from a storage location, read straight into the caller's memory.

Why not huggingface_hub's own client for this one piece: its httpx2 parses HTTP in pure Python and
returns each body as a new ``bytes`` (1.2-1.6 CPU s/GB measured here, most of a conversion's
cost), while ``http.client`` fills a preallocated buffer with ``readinto`` (0.3 s/GB). Everything
about the Hub itself (resolution, auth, listings, errors) still goes through huggingface_hub; this
module only talks to the signed storage URL the Hub's redirect names, and never sends it a token.

It follows huggingface_hub's settings where they apply to such a request: the download timeout
(``HF_HUB_DOWNLOAD_TIMEOUT``), proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``,
``NO_PROXY``) and the CA bundle (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``).
Connections are kept open and reused, one request at a time each.

An answer is checked before its body is read: it must be a 206 with exactly the range asked for
(``Content-Range``) and exactly as many bytes (``Content-Length``), so a server can never make us
hold, or wait for, more than was asked.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

# A request must bring at least this much per second, over every stretch of the timeout: a
# server that sends slower (a drip-feed) is given up on, however steadily it sends.
MIN_BYTES_PER_SECOND = 64 << 10
_SLICE = 256 << 10
# Retry-After values are capped: a server must not make a conversion sleep for hours.
MAX_RETRY_AFTER = 330.0

_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")


class StorageError(Exception):
    """A request for bytes failed; ``received`` bytes of it arrived and were kept."""

    def __init__(self, why: str, received: int = 0) -> None:
        super().__init__(why)
        self.why = why
        self.received = received


class Dropped(StorageError):
    """The connection broke, timed out or stalled: the rest may be asked for again."""


class Expired(StorageError):
    """The storage location answered 403: its signature expired (resolve the file again)."""


class _Stale(Dropped):
    """A kept-alive connection failed before any answer: the server had closed it."""


class Throttled(StorageError):
    """The storage host answered 429 or 5xx; ``wait`` seconds before asking again."""

    def __init__(self, why: str, wait: float) -> None:
        super().__init__(why)
        self.wait = wait


class Refused(StorageError):
    """The answer is not what was asked for (wrong status, range or length): never retried."""


@dataclass
class _Progress:
    """A request under way: its bytes so far, and what the watchdog last saw of them."""

    mark_time: float
    received: int = 0
    mark: int = 0
    stalled: bool = False
    # Kept from the connection once connected: an answer that will close the connection takes
    # the socket from it (``HTTPConnection.sock`` is then None), and a read must still be cut.
    sock: socket.socket | None = None


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int


class StorageClient:
    """Ranged GETs on storage locations over persistent connections, safe across threads.

    ``timeout``: seconds any one socket operation may take (huggingface_hub's download timeout
    when None). ``close()`` drops idle connections and breaks the ones in use, so that a reader
    blocked on a socket returns at once (a stop asked for must not wait for the network).
    """

    def __init__(self, timeout: float | None = None) -> None:
        if timeout is None:
            from huggingface_hub import constants

            timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        self._busy: dict[http.client.HTTPConnection, _Progress] = {}
        self._ssl: ssl.SSLContext | None = None

    def read_into(self, url: str, start: int, views: Sequence[memoryview], file_size: int) -> int:
        """Bytes ``[start, start + total)`` of the file at ``url`` (``file_size`` bytes long),
        read into ``views`` in turn (``total``: their summed length). Returns the bytes read,
        which is all of them; a StorageError says how many arrived before it failed."""
        try:
            return self._read_into(url, start, views, file_size, reuse=True)
        except _Stale:
            # A kept-alive connection the server had closed meanwhile: once more, on a new one.
            return self._read_into(url, start, views, file_size, reuse=False)

    def _read_into(
        self, url: str, start: int, views: Sequence[memoryview], file_size: int, *, reuse: bool
    ) -> int:
        total = sum(len(view) for view in views)
        end = start + total
        split = urlsplit(url)
        origin = _Origin(split.scheme, split.hostname or "", split.port or _default_port(split))
        target = split.path + (f"?{split.query}" if split.query else "")
        connection, progress, reused = self._connection(origin, reuse)
        # Through an HTTP proxy (not a tunnel) the request names the whole URL.
        direct = (
            isinstance(connection, http.client.HTTPSConnection) or connection.host == origin.host
        )
        reusable = False
        done = threading.Event()
        watchdog = threading.Thread(
            target=self._watch, args=(connection, progress, done), daemon=True
        )
        watchdog.start()
        try:
            try:
                connection.request(
                    "GET",
                    target if direct else url,
                    headers={"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"},
                )
                progress.sock = connection.sock
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if reused and not progress.stalled:
                    raise _Stale(_why(exc, progress)) from None
                raise Dropped(_why(exc, progress)) from None
            _check_answer(response, start, end, file_size)
            try:
                for view in views:
                    filled = 0
                    while filled < len(view):
                        # In slices, so the watchdog sees the bytes arrive.
                        got = response.readinto(view[filled : filled + _SLICE])
                        if not got:
                            raise Dropped(
                                f"{_why(None, progress)} after {progress.received} of {total} "
                                "bytes",
                                progress.received,
                            )
                        filled += got
                        progress.received += got
            except (OSError, http.client.HTTPException) as exc:
                raise Dropped(
                    f"{_why(exc, progress)} after {progress.received} of {total} bytes",
                    progress.received,
                ) from None
            reusable = response.isclosed() and not response.will_close
        finally:
            done.set()
            self._done_with(origin, connection, reusable)
        return progress.received

    def close(self) -> None:
        """Drop the idle connections and break the busy ones (their reads fail at once); a
        later request opens a new connection."""
        with self._lock:
            idle = [c for pool in self._idle.values() for c in pool]
            busy = list(self._busy.items())
            self._idle.clear()
        for connection in idle:
            connection.close()
        for connection, progress in busy:
            _cut(connection, progress)

    # --- connections ----------------------------------------------------------------------

    def _connection(
        self, origin: _Origin, reuse: bool
    ) -> tuple[http.client.HTTPConnection, _Progress, bool]:
        """A connection to ``origin`` (a kept-alive one if ``reuse`` and there is one), its
        request's progress, and whether it was kept alive."""
        with self._lock:
            pool = self._idle.get(origin)
            connection = pool.pop() if pool and reuse else None
            reused = connection is not None
            if connection is None:
                connection = self._open(origin)
            progress = _Progress(time.monotonic())
            self._busy[connection] = progress
            return connection, progress, reused

    def _watch(
        self, connection: http.client.HTTPConnection, progress: _Progress, done: threading.Event
    ) -> None:
        """Break the request if it brings fewer than ``MIN_BYTES_PER_SECOND`` over any stretch of
        ``timeout`` seconds; end with it (``done``)."""
        window = self.timeout
        while not done.wait(min(1.0, window / 4)):
            now = time.monotonic()
            if now - progress.mark_time < window:
                continue
            if progress.received - progress.mark < MIN_BYTES_PER_SECOND * window:
                progress.stalled = True
                _cut(connection, progress)
                return
            progress.mark, progress.mark_time = progress.received, now

    def _done_with(
        self, origin: _Origin, connection: http.client.HTTPConnection, reusable: bool
    ) -> None:
        with self._lock:
            self._busy.pop(connection, None)
            if reusable:
                self._idle.setdefault(origin, []).append(connection)
                return
        connection.close()

    def _open(self, origin: _Origin) -> http.client.HTTPConnection:
        proxy = _proxy_for(origin)
        host, port = (
            (proxy.hostname or "", proxy.port or 80) if proxy else (origin.host, origin.port)
        )
        if origin.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=self._ssl_context()
            )
            if proxy is not None:
                connection.set_tunnel(origin.host, origin.port, headers=_proxy_headers(proxy))
        elif origin.scheme == "http":
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        else:
            raise Refused(f"a storage location of scheme {origin.scheme!r}")
        return connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
            capath = os.environ.get("SSL_CERT_DIR") if not cafile else None
            self._ssl = ssl.create_default_context(cafile=cafile or None, capath=capath or None)
        return self._ssl


def _check_answer(response: http.client.HTTPResponse, start: int, end: int, size: int) -> None:
    """Raise unless ``response`` carries exactly bytes [start, end) of a file of ``size``."""
    status = response.status
    if status == 206:
        found = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range", "").strip())
        length = response.length
        if found is None or tuple(int(g) for g in found.groups()) != (start, end - 1, size):
            raise Refused(
                f"the storage host answered Content-Range "
                f"{response.getheader('Content-Range')!r} for bytes {start}-{end - 1}/{size}"
            )
        if response.chunked or length != end - start:
            raise Refused(f"the storage host announced {length} bytes for a range of {end - start}")
        return
    if status == 403:
        raise Expired("the storage location answered 403 (its signature has expired)")
    if status == 429 or status >= 500:
        wait = min(_retry_after(response), MAX_RETRY_AFTER)
        raise Throttled(f"the storage host answered HTTP {status}", wait)
    if status == 200:
        if start == 0 and end == size and response.length == size and not response.chunked:
            return  # the whole file was asked for: a server may answer it without a range
        raise Refused(f"the storage host answered 200 (the whole file) for bytes [{start}, {end})")
    raise Refused(f"the storage host answered HTTP {status} for bytes [{start}, {end})")


def _retry_after(response: http.client.HTTPResponse) -> float:
    value = (response.getheader("Retry-After") or "").strip()
    if value.isdigit():
        return float(value[:6])
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return 1.0


def _proxy_for(origin: _Origin) -> urllib.parse.SplitResult | None:
    proxies = urllib.request.getproxies()
    proxy = proxies.get(origin.scheme) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxy or bypass(origin.host, proxies):
        return None
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _proxy_headers(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(secret).decode()}


def _default_port(split: urllib.parse.SplitResult) -> int:
    return 443 if split.scheme == "https" else 80


def _cut(connection: http.client.HTTPConnection, progress: _Progress) -> None:
    """Break a connection from another thread: a read blocked on it returns at once."""
    sock = progress.sock or connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _why(exc: BaseException | None, progress: _Progress) -> str:
    if progress.stalled:
        return f"it brought less than {MIN_BYTES_PER_SECOND >> 10} KiB/s"
    if exc is None:
        return "the connection closed"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "it timed out"
    return type(exc).__name__
