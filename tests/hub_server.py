"""A local stand-in for the Hugging Face Hub, serving folders of files as repo revisions.

It answers what huggingface_hub (checked against 2.4.0) asks of the Hub when downloading:

- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: small files directly, with ``ETag`` (git blob
  sha1), ``X-Repo-Commit`` and ``Content-Length``; ``.safetensors``, ``.bin`` and files over
  10 MiB are LFS files and get a 302 with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and a
  ``Location`` on a second server, the "CDN", under another host name (``localhost`` where the
  Hub is ``127.0.0.1``), as the real Hub sends them to its storage. A different origin matters:
  huggingface_hub follows a HEAD's redirect when it stays on the Hub's origin, and reads the file's
  metadata from the 302 only when it leaves it, as it does on the real Hub.
- ``GET /api/models/{repo}`` and ``.../revision/{rev}`` (``?blobs=true`` adds size, blobId, lfs),
  ``.../tree/{rev}[/{path}]`` (``?recursive=true``) and ``.../refs``.
- ``Range`` on every file body; 404s with ``X-Error-Code`` RepoNotFound, RevisionNotFound or
  EntryNotFound and a JSON ``{"error": ...}`` body.
- Every LFS 302 carries, as the real Hub's redirect for a Xet-backed file does, ``X-Xet-Hash`` and
  a ``Link`` naming ``rel="xet-auth"`` (``{hub}/api/models/{repo}/xet-read-token/{commit}``, which
  answers 404) and ``rel="xet-reconstruction-info"`` (a made-up CAS path on the CDN, which serves
  nothing there), unless ``xet_headers=False``. Clients must run with ``HF_HUB_DISABLE_XET=1``.
  huggingface_hub 2.4.0 then still downloads over plain HTTP, but, seeing Xet metadata, it does
  not reuse the HEAD's ``Location``: its GET goes to ``/resolve`` again and follows that redirect
  (one more resolver request per file, and per retry).

It can be made as harsh as the real Hub (each off by default, each settable at run time):

- a fixed-window quota on ``/resolve`` requests (``resolver_quota``): over it, 429 with
  ``RateLimit``, ``RateLimit-Policy`` and ``Retry-After`` as the Hub sends them;
- storage locations that expire (``location_ttl``): ``Location`` carries ``expires`` and an HMAC
  ``sig``; the CDN answers 403 to an expired, unsigned or tampered location;
- a latency before every answer (``latency``);
- storage that lies about ranges or drips its bytes (``break_file`` kinds).

A revision is a folder on disk whose files are listed (and hashed) when it is added; do not change
the folder afterwards without adding it again. Its commit is a fake sha1 of the repo, the branch
and the files' digests, so identical content on two branches has distinct commits. Revisions can
be named by branch or by commit; re-adding a branch keeps the old commit reachable by its sha.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import secrets
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")
LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 1024 * 1024
_LFS_SPEC = "https://git-lfs.github.com/spec/v1"

FaultKind = Literal[
    "truncate", "corrupt", "status", "long", "short", "no_range", "wrong_range", "drip"
]

_EXTRA_BYTE = b"\xa5"  # what a "long" answer pads its body with
_DRIP_TICK = 0.1  # seconds between the pieces of a "drip" body


@dataclass(frozen=True)
class HubFile:
    """One file of a revision, with the digests the Hub reports for it."""

    path: str
    disk_path: Path
    size: int
    blob_id: str
    sha256: str | None
    pointer_size: int | None

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Revision:
    """A commit: its sha and its files by repo path."""

    commit: str
    files: dict[str, HubFile]


@dataclass(frozen=True)
class RequestRecord:
    """One request the server received."""

    method: str
    path: str
    query: str
    range: str | None
    server: Literal["hub", "cdn"]


@dataclass
class Fault:
    """Breaks the bodies (or statuses) served for one file; ``times`` None means every time."""

    repo_id: str
    path: str
    revision: str | None
    kind: FaultKind
    offset: int
    status: int
    times: int | None
    # A ``status`` fault's Retry-After header (None: none).
    retry_after: str | None = None
    # The one request method broken (None: every one).
    method: str | None = None
    fired: int = 0


@dataclass
class _Repo:
    branches: dict[str, list[str]] = field(default_factory=dict)  # name -> commits, head last
    commits: dict[str, Revision] = field(default_factory=dict)

    def resolve(self, revision: str) -> Revision | None:
        history = self.branches.get(revision)
        if history:
            return self.commits[history[-1]]
        if any(revision in h for h in self.branches.values()):
            return self.commits.get(revision)
        return None


_DIGESTS: dict[tuple[str, int, int], tuple[str, str | None, int | None]] = {}
_DIGESTS_LOCK = threading.Lock()


def _chunks(disk_path: Path) -> Iterator[bytes]:
    with disk_path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _git_blob_id(size: int, chunks: Iterable[bytes]) -> str:
    sha = hashlib.sha1(f"blob {size}\0".encode())
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()


def _digest(disk_path: Path, size: int) -> tuple[str, str | None, int | None]:
    """(git blob id, sha256 or None, LFS pointer size or None), cached by path, size and mtime."""
    stat = disk_path.stat()
    key = (str(disk_path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    if disk_path.suffix in LFS_SUFFIXES or size >= LFS_MIN_SIZE:
        sha256 = hashlib.sha256()
        for chunk in _chunks(disk_path):
            sha256.update(chunk)
        pointer = f"version {_LFS_SPEC}\noid sha256:{sha256.hexdigest()}\nsize {size}\n".encode()
        result = (_git_blob_id(len(pointer), [pointer]), sha256.hexdigest(), len(pointer))
    else:
        result = (_git_blob_id(size, _chunks(disk_path)), None, None)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = result
    return result


def _scan(folder: Path) -> dict[str, HubFile]:
    files: dict[str, HubFile] = {}
    for disk_path in sorted(folder.rglob("*")):
        if not disk_path.is_file():
            continue
        path = disk_path.relative_to(folder).as_posix()
        size = disk_path.stat().st_size
        blob_id, sha256, pointer_size = _digest(disk_path, size)
        files[path] = HubFile(path, disk_path, size, blob_id, sha256, pointer_size)
    return files


def _parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["bad"] | None:
    """(start, end exclusive) for one ``bytes=`` range, None to send it all, "bad" for a 416."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if not first:
            suffix = int(last)
            return "bad" if suffix <= 0 or size == 0 else (max(size - suffix, 0), size)
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    except ValueError:
        return None
    return "bad" if start >= size or end <= start else (start, end)


class _Quota:
    """A fixed window of ``limit`` requests: it opens at the first request after the last one
    closed and lasts ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError(f"bad quota: {limit} requests per {window} s")
        self.limit = limit
        self.window = window
        self._ends = 0.0
        self._used = 0

    def take(self, now: float) -> int | None:
        """Count one request; None if allowed, else the whole seconds until the window resets."""
        if now >= self._ends:
            self._ends = now + self.window
            self._used = 0
        self._used += 1
        if self._used <= self.limit:
            return None
        return max(1, math.ceil(self._ends - now))

    @property
    def policy(self) -> str:
        return f'"fixed window";"resolvers";q={self.limit};w={max(1, int(self.window))}'


class StandInHub:
    """The stand-in Hub: ``.url`` for HF_ENDPOINT, repos added with ``add_revision``.

    ``bytes_per_second`` limits how fast file bodies are sent, all connections together (a link
    of that speed, for benchmarks); None: as fast as the machine goes.

    ``resolver_quota`` (N, W): at most N ``/resolve`` requests (HEAD or GET, answered or not) per
    fixed window of W seconds, as the real Hub counts "resolvers"; the others get a 429.
    ``location_ttl``: LFS redirects name storage locations signed for that many seconds.
    ``latency``: seconds waited before answering each request, on both servers. ``xet_headers``:
    send the Xet headers on LFS redirects. Each has a ``set_*`` method to change it at run time.
    """

    def __init__(
        self,
        bytes_per_second: float | None = None,
        *,
        resolver_quota: tuple[int, float] | None = None,
        location_ttl: float | None = None,
        latency: float = 0.0,
        xet_headers: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._link = _Link(bytes_per_second)
        self._quota = _Quota(*resolver_quota) if resolver_quota is not None else None
        self._location_ttl = location_ttl
        self._latency = latency
        self._xet_headers = xet_headers
        self._secret = secrets.token_bytes(32)
        self._counts: Counter[str] = Counter()
        self._served: dict[str, int] = {}
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, HubFile] = {}
        self._faults: list[Fault] = []
        self._resolve_lies: dict[tuple[str, str], dict[str, str]] = {}
        self._api_body: bytes | None = None
        self._records: list[RequestRecord] = []
        self._downloads: list[tuple[str, str, str]] = []
        self._hub = _Server(self, "hub")
        self._cdn = _Server(self, "cdn")
        # A short poll interval keeps close() quick: shutdown() waits for the next poll.
        self._threads = [
            threading.Thread(
                target=server.serve_forever, args=(0.02,), daemon=True, name=f"stand-in-{kind}"
            )
            for server, kind in ((self._hub, "hub"), (self._cdn, "cdn"))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT."""
        return self._hub.base_url

    @property
    def cdn_url(self) -> str:
        """Where LFS files are redirected to: the same machine under another host name."""
        return self._cdn.base_url.replace("127.0.0.1", "localhost")

    # --- repos -----------------------------------------------------------------------------

    def add_revision(
        self, repo_id: str, branch: str, folder: Path, *, commit: str | None = None
    ) -> str:
        """Point ``branch`` of ``repo_id`` at the files of ``folder``; return the commit sha."""
        if not Path(folder).is_dir():
            raise NotADirectoryError(folder)
        files = _scan(Path(folder))
        if commit is None:
            seed = hashlib.sha1(f"stand-in\0{repo_id}\0{branch}\0".encode())
            for path, f in files.items():
                seed.update(f"{path}\0{f.sha256 or f.blob_id}\0".encode())
            commit = seed.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[commit] = Revision(commit, files)
            history = repo.branches.setdefault(branch, [])
            if commit in history:
                history.remove(commit)
            history.append(commit)
            for f in files.values():
                if f.sha256 is not None:
                    self._blobs[f.sha256] = f
        return commit

    def remove_revision(self, repo_id: str, branch: str) -> None:
        """Delete a branch; its commits stay reachable only if another branch has them."""
        with self._lock:
            repo = self._repos[repo_id]
            repo.branches.pop(branch)
            live = {c for history in repo.branches.values() for c in history}
            repo.commits = {c: r for c, r in repo.commits.items() if c in live}

    def remove_repo(self, repo_id: str) -> None:
        with self._lock:
            del self._repos[repo_id]

    def commit_of(self, repo_id: str, revision: str) -> str:
        """The commit that a branch (or commit) of ``repo_id`` currently names."""
        with self._lock:
            resolved = self._repos[repo_id].resolve(revision)
        if resolved is None:
            raise KeyError(f"{repo_id}@{revision}")
        return resolved.commit

    def branches(self, repo_id: str) -> list[str]:
        with self._lock:
            return list(self._repos[repo_id].branches)

    # --- harshness -------------------------------------------------------------------------

    def set_resolver_quota(self, n: int | None, window: float = 300.0) -> None:
        """Allow ``n`` /resolve requests per fixed ``window`` seconds (None: no limit).

        A new quota starts a new window.
        """
        quota = _Quota(n, window) if n is not None else None
        with self._lock:
            self._quota = quota

    def set_location_ttl(self, seconds: float | None) -> None:
        """Sign storage locations for ``seconds`` from now on (None: unsigned, never refused)."""
        with self._lock:
            self._location_ttl = seconds

    def set_api_body(self, body: bytes | None) -> None:
        """Answer every ``/api/models/...`` request with 200 and ``body`` as JSON (None: the
        real answers): malformed, deeply nested or wrongly shaped listings."""
        with self._lock:
            self._api_body = body

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    def set_xet_headers(self, on: bool) -> None:
        with self._lock:
            self._xet_headers = on

    # --- faults ----------------------------------------------------------------------------

    def break_file(
        self,
        repo_id: str,
        path: str,
        *,
        revision: str | None = None,
        kind: FaultKind = "truncate",
        offset: int = 0,
        status: int = 500,
        times: int | None = None,
        retry_after: str | None = None,
        method: str | None = None,
    ) -> Fault:
        """Make downloads of ``path`` fail: on every revision, or the one (branch or commit) given.

        Every kind but ``status`` breaks file bodies (GETs), on /resolve and on the CDN alike; "the
        range asked" is the whole file for a GET without ``Range``.

        - ``truncate``: the body stops at file byte ``offset`` and the connection is closed,
          though the full Content-Length was announced.
        - ``corrupt``: the byte at file offset ``offset`` is inverted.
        - ``status``: answer ``status`` (HEAD and GET on /resolve, and the CDN).
        - ``long``: Content-Length and body are ``offset`` bytes longer than the range asked (the
          right bytes, then filler); the Content-Range is the one asked.
        - ``short``: Content-Length and body are ``offset`` bytes shorter than the range asked
          (its first bytes), yet the Content-Range names the whole range asked.
        - ``no_range``: Range is ignored: a 200 with the whole file.
        - ``wrong_range``: a 206 whose Content-Range starts ``offset`` bytes later than asked
          (clipped to the file) and whose body is the bytes from there, as many as asked while the
          file lasts.
        - ``drip``: an honest answer whose body comes at about ``offset`` bytes per second (at least
          1); it stops when the client hangs up or the hub closes.

        ``retry_after``: the Retry-After header of a ``status`` answer. ``method``: break only
        requests of that method ("HEAD" or "GET"; None: both).
        ``times`` limits how many responses are broken (None: all). Note huggingface_hub retries a
        truncated body with a Range request after a 1 s sleep, up to 5 times without progress.
        """
        fault = Fault(repo_id, path, revision, kind, offset, status, times, retry_after, method)
        with self._lock:
            self._faults.append(fault)
        return fault

    def lie_on_resolve(self, repo_id: str, path: str, **headers: str) -> None:
        """Answer every resolve of LFS file ``path`` with ``headers`` in place of the true ones
        (e.g. ``X-Linked-Size``, ``X-Linked-Etag``, ``X-Repo-Commit``, ``Location``; header
        names are given with ``_`` for ``-``)."""
        with self._lock:
            self._resolve_lies[(repo_id, path)] = {
                name.replace("_", "-"): value for name, value in headers.items()
            }

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._resolve_lies.clear()

    # --- logs ------------------------------------------------------------------------------

    @property
    def resolver_requests(self) -> int:
        """Requests to ``/{repo}/resolve/...`` (refused ones too) since the last clear."""
        with self._lock:
            return self._counts["resolver"]

    @property
    def api_requests(self) -> int:
        """Requests under ``/api/`` on the hub since the last clear."""
        with self._lock:
            return self._counts["api"]

    @property
    def rate_limited(self) -> int:
        """429s answered for the resolver quota since the last clear."""
        with self._lock:
            return self._counts["rate_limited"]

    @property
    def expired(self) -> int:
        """403s the CDN answered (expired, unsigned or tampered location) since the last clear."""
        with self._lock:
            return self._counts["expired"]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far, query strings left out."""
        with self._lock:
            return [(r.method, r.path) for r in self._records]

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    @property
    def downloads(self) -> list[tuple[str, str, str]]:
        """(repo_id, commit, path) of every file body sent (GET, full or partial)."""
        with self._lock:
            return list(self._downloads)

    def downloaded_paths(self) -> set[str]:
        return {path for _, _, path in self.downloads}

    def served_bytes(self, path: str | None = None) -> int:
        """Body bytes sent of file ``path`` (every file when None) since the last clear."""
        with self._lock:
            if path is None:
                return sum(self._served.values())
            return self._served.get(path, 0)

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()
            self._downloads.clear()
            self._served.clear()
            self._counts.clear()

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._stopping.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> StandInHub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- used by the request handler -------------------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _record_download(self, repo_id: str, commit: str, path: str) -> None:
        with self._lock:
            self._downloads.append((repo_id, commit, path))

    def _tally(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _take_resolver(self) -> tuple[int, str] | None:
        """Count a /resolve request; (seconds to reset, policy) when it is over the quota."""
        with self._lock:
            self._counts["resolver"] += 1
            if self._quota is None:
                return None
            reset = self._quota.take(time.monotonic())
            if reset is None:
                return None
            self._counts["rate_limited"] += 1
            return reset, self._quota.policy

    def _wait_latency(self) -> None:
        with self._lock:
            latency = self._latency
        if latency > 0:
            self._stopping.wait(latency)

    def _sign(self, path: str, params: list[tuple[str, str]]) -> str:
        message = f"{path}?{urlencode(params)}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _location(self, path: str, params: list[tuple[str, str]]) -> str:
        """The CDN URL of ``path``, signed with an expiry when a TTL is in force."""
        with self._lock:
            ttl = self._location_ttl
        if ttl is not None:
            params = [*params, ("expires", repr(time.time() + ttl))]
            params.append(("sig", self._sign(path, params)))
        return f"{self.cdn_url}{path}?{urlencode(params)}"

    def _location_refusal(self, path: str, query: str, now: float) -> tuple[str, str] | None:
        """(code, message) of the 403 a CDN request gets, None if its location is good."""
        with self._lock:
            ttl = self._location_ttl
        if ttl is None:
            return None
        pairs = parse_qsl(query, keep_blank_values=True)
        signatures = [value for name, value in pairs if name == "sig"]
        unsigned = [(name, value) for name, value in pairs if name != "sig"]
        if len(signatures) != 1 or not hmac.compare_digest(
            signatures[0], self._sign(path, unsigned)
        ):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided",
            )
        try:
            expires = float(dict(unsigned)["expires"])
        except (KeyError, ValueError):
            return "AccessDenied", "Request has no expiry"
        if now > expires:
            return "AccessDenied", "Request has expired"
        return None

    def _count(self, path: str, size: int) -> None:
        with self._lock:
            self._served[path] = self._served.get(path, 0) + size

    def _lookup(self, repo_id: str, revision: str) -> tuple[_Repo | None, Revision | None]:
        with self._lock:
            repo = self._repos.get(repo_id)
            return repo, (repo.resolve(revision) if repo is not None else None)

    def _repo_ids(self) -> set[str]:
        with self._lock:
            return set(self._repos)

    def _refs(self, repo_id: str) -> dict[str, str] | None:
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return None
            return {name: history[-1] for name, history in repo.branches.items()}

    def _blob(self, sha256: str) -> HubFile | None:
        with self._lock:
            return self._blobs.get(sha256)

    def _take_fault(
        self, repo_id: str, commit: str, path: str, body: bool, method: str
    ) -> Fault | None:
        """The fault to apply to this answer, counted as fired; only ``status`` faults apply to
        answers without a file body (HEADs, redirects)."""
        with self._lock:
            for fault in self._faults:
                if fault.repo_id != repo_id or fault.path != path:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if not body and fault.kind != "status":
                    continue
                if fault.revision is not None:
                    repo = self._repos.get(repo_id)
                    target = repo.resolve(fault.revision) if repo is not None else None
                    if target is None or target.commit != commit:
                        continue
                fault.fired += 1
                return fault
        return None


class _Link:
    """A shared link of ``rate`` bytes per second (None: unlimited), as a token bucket."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def wait(self, size: int) -> None:
        if self.rate is None:
            return
        with self._lock:
            start = max(self._free_at, time.monotonic())
            self._free_at = start + size / self.rate
            done = self._free_at
        time.sleep(max(0.0, done - time.monotonic()))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: StandInHub, kind: Literal["hub", "cdn"]) -> None:
        self.hub = hub
        self.kind: Literal["hub", "cdn"] = kind
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-body (a reader that stopped, a killed process) is not the
        # server's error; socketserver would print a traceback on the tests' stderr.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def close_connections(self) -> None:
        """Drop idle keep-alive connections so that their handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As servers and CDNs do: without it, a body sent after its headers waits for the client's
    # delayed ACK (about 40 ms a request), a cost of the stand-in and not of the protocol.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self.close_connection = True
        self._dispatch("POST")

    # --- routing ---------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        arrived = time.time()
        split = urlsplit(self.path)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        path = "/" + "/".join(segments)
        hub._record(
            RequestRecord(method, path, split.query, self.headers.get("Range"), self.server.kind)
        )
        limited: tuple[int, str] | None = None
        refusal: tuple[str, str] | None = None
        if self.server.kind == "cdn":
            # Judged on arrival: the latency below must not expire a location in time.
            refusal = hub._location_refusal(path, split.query, arrived)
        elif segments[0] == "api":
            hub._tally("api")
        elif "resolve" in segments[1:3]:
            limited = hub._take_resolver()
        hub._wait_latency()
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        if limited is not None:
            self._rate_limit(method, *limited)
        elif refusal is not None:
            hub._tally("expired")
            self._send_refusal(method, *refusal)
        elif method not in ("GET", "HEAD"):
            self._send_json(405, {"error": f"{method} is not supported"}, method)
        elif self.server.kind == "cdn":
            self._serve_blob(method, segments, query)
        elif segments[:2] == ["api", "models"] and hub._api_body is not None:
            self._send_raw_json(method, hub._api_body)
        elif segments[:2] == ["api", "models"] and len(segments) > 2:
            self._serve_api(method, segments[2:], query)
        else:
            self._serve_resolve(method, segments)

    @staticmethod
    def _split_repo(
        segments: list[str], known: set[str], keywords: tuple[str, ...]
    ) -> tuple[str, list[str]] | None:
        """Split ``org/name/rest...`` (or ``name/rest...``) into repo id and the rest."""
        for n in (2, 1):
            if len(segments) >= n and "/".join(segments[:n]) in known:
                return "/".join(segments[:n]), segments[n:]
        for n in (2, 1):
            if len(segments) == n or (len(segments) > n and segments[n] in keywords):
                return "/".join(segments[:n]), segments[n:]
        return None

    def _serve_api(self, method: str, segments: list[str], query: dict[str, str]) -> None:
        hub = self.server.hub
        split = self._split_repo(segments, hub._repo_ids(), ("revision", "tree", "refs"))
        if split is None:
            self._send_json(404, {"error": "Not found"}, method)
            return
        repo_id, rest = split
        if hub._refs(repo_id) is None:
            self._not_found(method, "RepoNotFound", "Repository not found")
            return
        if rest == ["refs"]:
            self._send_refs(method, repo_id, query)
        elif not rest or (len(rest) == 2 and rest[0] == "revision"):
            self._send_model_info(method, repo_id, rest[1] if rest else "main", query)
        elif len(rest) >= 2 and rest[0] == "tree":
            self._send_tree(method, repo_id, rest[1], "/".join(rest[2:]), query)
        else:
            self._send_json(404, {"error": "Not found"}, method)

    def _revision(self, method: str, repo_id: str, revision: str) -> Revision | None:
        repo, resolved = self.server.hub._lookup(repo_id, revision)
        if repo is None:
            self._not_found(method, "RepoNotFound", "Repository not found")
        elif resolved is None:
            self._not_found(method, "RevisionNotFound", f"Invalid rev id: {revision}")
        return resolved

    # --- API -------------------------------------------------------------------------------

    def _send_refs(self, method: str, repo_id: str, query: dict[str, str]) -> None:
        refs = self.server.hub._refs(repo_id) or {}
        body: dict = {
            "branches": [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": commit}
                for name, commit in refs.items()
            ],
            "converts": [],
            "tags": [],
        }
        if query.get("include_prs"):
            body["pullRequests"] = []
        self._send_json(200, body, method)

    def _send_model_info(
        self, method: str, repo_id: str, revision: str, query: dict[str, str]
    ) -> None:
        resolved = self._revision(method, repo_id, revision)
        if resolved is None:
            return
        with_blobs = query.get("blobs", "").lower() in ("true", "1")
        siblings = []
        for f in resolved.files.values():
            sibling: dict = {"rfilename": f.path}
            if with_blobs:
                sibling["size"] = f.size
                sibling["blobId"] = f.blob_id
                if f.is_lfs:
                    sibling["lfs"] = {
                        "sha256": f.sha256,
                        "size": f.size,
                        "pointerSize": f.pointer_size,
                    }
            siblings.append(sibling)
        author = repo_id.split("/")[0] if "/" in repo_id else None
        body = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": author,
            "sha": resolved.commit,
            "lastModified": "2023-01-01T00:00:00.000Z",
            "createdAt": "2023-01-01T00:00:00.000Z",
            "private": False,
            "disabled": False,
            "gated": False,
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["transformers", "gpt_neox", "text-generation"],
            "siblings": siblings,
        }
        self._send_json(200, body, method)

    def _send_tree(
        self, method: str, repo_id: str, revision: str, base: str, query: dict[str, str]
    ) -> None:
        resolved = self._revision(method, repo_id, revision)
        if resolved is None:
            return
        recursive = query.get("recursive", "").lower() in ("true", "1")
        prefix = f"{base.strip('/')}/" if base.strip("/") else ""
        folders = {
            "/".join(path.split("/")[:i])
            for path in resolved.files
            for i in range(1, path.count("/") + 1)
        }
        if prefix and prefix[:-1] not in folders:
            self._not_found(method, "EntryNotFound", f"{base} does not exist on {revision}")
            return

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries: list[dict] = [
            {
                "type": "directory",
                "oid": hashlib.sha1(f"{resolved.commit}\0{folder}".encode()).hexdigest(),
                "size": 0,
                "path": folder,
            }
            for folder in sorted(folders)
            if wanted(folder)
        ]
        for f in resolved.files.values():
            if not wanted(f.path):
                continue
            entry: dict = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.is_lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries.append(entry)
        self._send_json(200, entries, method)

    # --- files -----------------------------------------------------------------------------

    def _serve_resolve(self, method: str, segments: list[str]) -> None:
        hub = self.server.hub
        split = self._split_repo(segments, hub._repo_ids(), ("resolve",))
        if split is None or len(split[1]) < 3 or split[1][0] != "resolve":
            self._send_json(404, {"error": "Not found"}, method)
            return
        repo_id, (_, revision, *parts) = split
        resolved = self._revision(method, repo_id, revision)
        if resolved is None:
            return
        path = "/".join(parts)
        f = resolved.files.get(path)
        if f is None:
            self._not_found(
                method, "EntryNotFound", f"{path} does not exist on {revision}", resolved.commit
            )
            return
        # A redirect has no body to break: body faults wait for the CDN's answer.
        body = method == "GET" and not f.is_lfs
        fault = hub._take_fault(repo_id, resolved.commit, path, body, method)
        if fault is not None and fault.kind == "status":
            wait = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
            self._send_json(fault.status, {"error": "injected fault"}, method, wait)
            return
        headers = {"X-Repo-Commit": resolved.commit, "Accept-Ranges": "bytes"}
        if f.is_lfs:
            assert f.sha256 is not None
            target = hub._location(
                f"/lfs/{f.sha256}",
                [("repo", repo_id), ("commit", resolved.commit), ("path", path)],
            )
            headers |= {
                "ETag": f'"{f.blob_id}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
                "Location": target,
            }
            if hub._xet_headers:
                xet_hash = hashlib.sha256(f.sha256.encode()).hexdigest()
                headers["X-Xet-Hash"] = xet_hash
                headers["Link"] = (
                    f"<{hub.url}/api/models/{repo_id}/xet-read-token/{resolved.commit}>;"
                    f' rel="xet-auth", <{hub._cdn.base_url}/xet-cas/reconstruction/{xet_hash}>;'
                    ' rel="xet-reconstruction-info"'
                )
            with hub._lock:
                headers |= hub._resolve_lies.get((repo_id, path), {})
            self._send_empty(302, headers)
            return
        headers["ETag"] = f'"{f.blob_id}"'
        self._send_file(method, f, headers, fault, (repo_id, resolved.commit))

    def _serve_blob(self, method: str, segments: list[str], query: dict[str, str]) -> None:
        hub = self.server.hub
        f = hub._blob(segments[1]) if len(segments) == 2 and segments[0] == "lfs" else None
        if f is None:
            self._send_json(404, {"error": "Not found"}, method)
            return
        repo_id, commit, path = query.get("repo", ""), query.get("commit", ""), query.get("path")
        fault = hub._take_fault(repo_id, commit, path or f.path, method == "GET", method)
        if fault is not None and fault.kind == "status":
            wait = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
            self._send_json(fault.status, {"error": "injected fault"}, method, wait)
            return
        headers = {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"}
        self._send_file(method, f, headers, fault, (repo_id, commit) if path else None)

    def _send_file(
        self,
        method: str,
        f: HubFile,
        headers: dict[str, str],
        fault: Fault | None,
        download: tuple[str, str] | None,
    ) -> None:
        kind = fault.kind if fault is not None else None
        offset = fault.offset if fault is not None else 0
        asked = self.headers.get("Range") if kind != "no_range" else None
        span = _parse_range(asked, f.size)
        if span == "bad":
            self._send_empty(416, {"Content-Range": f"bytes */{f.size}"})
            return
        start, end = span if span is not None else (0, f.size)
        content_range = f"bytes {start}-{end - 1}/{f.size}" if span is not None else None
        stop, extra = end, 0  # file bytes [start, stop) are sent, then ``extra`` filler bytes
        announced = end - start
        if kind == "truncate":
            stop = min(end, max(start, offset))
        elif kind == "long":
            extra = max(offset, 0)
            announced += extra
        elif kind == "short":
            stop = max(start, end - offset)
            announced = stop - start
        elif kind == "wrong_range" and f.size > 0:
            start = min(max(start + offset, 0), f.size - 1)
            stop = end = min(start + announced, f.size)
            announced = end - start
            content_range = f"bytes {start}-{end - 1}/{f.size}"
        self.send_response(206 if content_range is not None else 200)
        if content_range is not None:
            headers = headers | {"Content-Range": content_range}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if method == "HEAD":
            return
        if download is not None:
            self.server.hub._record_download(download[0], download[1], f.path)
        drip = max(offset, 1) if kind == "drip" else None
        sent = 0
        for chunk in self._file_chunks(f, start, stop, fault, drip):
            if drip is not None:
                if not self._drip(chunk, drip):
                    self.close_connection = True
                    return
                self.server.hub._count(f.path, len(chunk))
            else:
                self.server.hub._link.wait(len(chunk))
                # Counted before it is sent: a client that has the bytes sees them counted.
                self.server.hub._count(f.path, len(chunk))
                self.wfile.write(chunk)
            sent += len(chunk)
        if extra:
            self.wfile.write(_EXTRA_BYTE * extra)
            sent += extra
        if sent < announced:
            self.wfile.flush()
            self.close_connection = True

    @staticmethod
    def _file_chunks(
        f: HubFile, start: int, stop: int, fault: Fault | None, drip: int | None
    ) -> Iterator[bytes]:
        """File bytes [start, stop), in pieces of one drip tick when dripping; "corrupt" applied."""
        size = _CHUNK if drip is None else max(1, int(drip * _DRIP_TICK))
        with f.disk_path.open("rb") as source:
            source.seek(start)
            position = start
            while position < stop:
                chunk = bytearray(source.read(min(size, stop - position)))
                if not chunk:
                    return
                if fault is not None and fault.kind == "corrupt":
                    at = fault.offset - position
                    if 0 <= at < len(chunk):
                        chunk[at] ^= 0xFF
                yield bytes(chunk)
                position += len(chunk)

    def _drip(self, chunk: bytes, rate: int) -> bool:
        """Send ``chunk`` at ``rate`` bytes per second; False once the client or the hub is gone."""
        stopping = self.server.hub._stopping
        if stopping.is_set() or self._client_gone():
            return False
        try:
            self.wfile.write(chunk)
            self.wfile.flush()
        except OSError:
            return False
        return not stopping.wait(len(chunk) / rate)

    def _client_gone(self) -> bool:
        """Whether the client has closed its end (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    # --- plain responses -------------------------------------------------------------------

    def _rate_limit(self, method: str, reset: int, policy: str) -> None:
        headers = {
            "RateLimit": f'"resolvers";r=0;t={reset}',
            "RateLimit-Policy": policy,
            "Retry-After": str(reset),
        }
        body = {"error": "You have exceeded the rate limit for resolvers; retry later."}
        self._send_json(429, body, method, headers)

    def _send_refusal(self, method: str, code: str, message: str) -> None:
        data = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _not_found(self, method: str, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        self._send_json(404, {"error": message}, method, headers)

    def _send_raw_json(self, method: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _send_json(
        self,
        status: int,
        body: object,
        method: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _send_empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def resolve_url(hub_url: str, repo_id: str, revision: str, path: str) -> str:
    """The ``/resolve`` URL of a file, encoded as huggingface_hub encodes it."""
    return f"{hub_url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"
