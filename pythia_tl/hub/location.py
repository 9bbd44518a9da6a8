"""Where a weight file's bytes are: resolved once through huggingface_hub, again only on expiry.

``get_hf_file_metadata`` is one ``HEAD /resolve/`` request (a "resolver" request, the kind the
Hub rate-limits per 5-minute window): it carries the token, endpoint, offline mode and the
Hub's errors, and returns the signed storage URL the Hub redirects to. Every byte range of the
file is then read from that URL; when it expires (403), the file is resolved again.

A 429, 408 or 5xx is waited out here, not inside huggingface_hub, so that the wait is capped
(``MAX_RETRY_AFTER`` whatever ``Retry-After`` or ``RateLimit`` ask for, ``RESOLVE_ATTEMPTS``
attempts) and reported once (``RateLimited``) rather than slept through in silence.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from pythia_tl.errors import RateLimited, SourceError
from pythia_tl.hub.errors import HubUnreachable, asking_the_hub
from pythia_tl.hub.transport import MAX_RETRY_AFTER

if TYPE_CHECKING:
    from huggingface_hub import HfFileMetadata

    from pythia_tl.hub.remote import RemoteFile

# Attempts at resolving a file when the Hub answers 429 or 5xx, or cannot be reached.
RESOLVE_ATTEMPTS = 6


@dataclass(frozen=True)
class StorageLocation:
    """A signed URL that serves a file's bytes by range."""

    url: str
    # When it was resolved (time.monotonic()), to tell which of two locations is older.
    resolved_at: float


class Resolver:
    """The storage location of one file of one commit, resolved on first use and renewed when
    it expires; threads reading the same file share one resolution."""

    def __init__(self, file: RemoteFile, sleep: Callable[[float], None] = time.sleep) -> None:
        self.file = file
        self._sleep = sleep
        self._lock = threading.Lock()
        self._location: StorageLocation | None = None

    def location(self) -> StorageLocation:
        with self._lock:
            if self._location is None:
                self._location = self._resolve()
            return self._location

    def renew(self, expired: StorageLocation) -> StorageLocation:
        """A fresh location, unless another thread has renewed ``expired`` already."""
        with self._lock:
            if self._location is None or self._location.resolved_at <= expired.resolved_at:
                self._location = self._resolve()
            return self._location

    def _resolve(self) -> StorageLocation:
        from huggingface_hub import hf_hub_url

        file = self.file
        url = hf_hub_url(file.repo_id, file.name, revision=file.commit)
        told = False
        for attempt in range(RESOLVE_ATTEMPTS):
            last = attempt + 1 == RESOLVE_ATTEMPTS
            try:
                with asking_the_hub(file.repo_id, file.commit[:12]):
                    metadata = _metadata(url)
            except _Retry as retry:
                if last:
                    raise SourceError(
                        f"{file.where}: the Hub answered HTTP {retry.status} to {attempt + 1} "
                        "attempts at resolving the file; run the command again later"
                    ) from None
                wait = retry.wait if retry.wait is not None else float(2**attempt)
                if not told and (retry.status == 429 or wait > 1):
                    warnings.warn(RateLimited(_waiting(file, retry, wait)), stacklevel=2)
                    told = True
                self._sleep(wait)
                continue
            except HubUnreachable:
                if last:
                    raise
                self._sleep(float(2**attempt))
                continue
            return self._checked(
                url, metadata.location, metadata.size, metadata.etag, metadata.commit_hash
            )
        raise AssertionError("unreachable")

    def _checked(
        self, url: str, location: str, size: int | None, etag: str | None, commit: str | None
    ) -> StorageLocation:
        file = self.file
        target = urljoin(url, location)
        if urlsplit(target).scheme not in ("http", "https"):
            raise SourceError(f"{file.where}: the Hub redirects to a location that is not HTTP(S)")
        if commit is not None and commit != file.commit:
            raise SourceError(
                f"{file.where}: the Hub resolved the file at commit {commit[:12]}, not the "
                "commit it listed"
            )
        if size is not None and size != file.size:
            raise SourceError(f"{file.where}: the Hub reports {size} bytes, but listed {file.size}")
        if file.sha256 is not None and etag is not None and etag != file.sha256:
            raise SourceError(
                f"{file.where}: the Hub's ETag {etag[:16]}... is not the sha256 it listed"
            )
        return StorageLocation(target, time.monotonic())


class _Retry(Exception):
    """The Hub answered 429, 408 or 5xx: ask again after ``wait`` seconds (None: back off);
    ``asked``: the wait its headers asked for, before the cap."""

    def __init__(self, status: int, wait: float | None, asked: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.wait = wait
        self.asked = asked


def _waiting(file: RemoteFile, retry: _Retry, wait: float) -> str:
    what = "is rate-limiting requests" if retry.status == 429 else f"answered HTTP {retry.status}"
    capped = ""
    if retry.asked is not None and retry.asked > wait:
        capped = f" (it asked for {retry.asked:.0f} s; waits are capped at {MAX_RETRY_AFTER:.0f} s)"
    return f"the Hub {what} ({file.repo_id}); waiting {wait:.0f} s before asking again{capped}"


def _metadata(url: str) -> HfFileMetadata:
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import parse_ratelimit_headers

    try:
        return get_hf_file_metadata(url, retry_on_errors=False)
    except HfHubHTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else 0
        if status not in (408, 429) and status < 500:
            raise
        wait = None
        if response is not None:
            limit = parse_ratelimit_headers(response.headers)
            retry_after = response.headers.get("Retry-After", "").strip()
            if limit is not None and limit.remaining == 0:
                wait = float(limit.reset_in_seconds) + 1
            elif retry_after.isdigit():
                wait = float(retry_after[:6])
        capped = None if wait is None else min(wait, MAX_RETRY_AFTER)
        raise _Retry(status, capped, wait) from None
