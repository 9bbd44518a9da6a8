"""Removing a batch's downloads from the cache once the revisions that need them are done.

A suite does not fit on disk twice, so each revision's weight files leave the cache when it is
finished. Only files this run added to the cache are removed: a revision the cache held before
stays, and so does any blob another snapshot links to. A blob is also kept while another
revision of the run still needs it: revisions can share a shard (the Hub has branches that carry
another branch's first shard), and with several jobs one may be downloading it while another
finishes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from pythia_tl.source.hub import HubRevision, remove_cached_weights


class DownloadJanitor:
    """Tracks which blobs the run's revisions use and removes each when no revision needs it."""

    def __init__(self, remove: bool) -> None:
        self._remove = remove
        self._lock = threading.Lock()
        self._users: Counter[str] = Counter()
        self._downloaded: set[str] = set()

    def start(self, sha256: Iterable[str]) -> None:
        """A revision that will read blobs ``sha256`` starts (call before downloading)."""
        with self._lock:
            self._users.update(sha256)

    def finish(self, sha256: Iterable[str], fetched: HubRevision | None) -> int:
        """The revision started with ``sha256`` is done; returns the bytes freed.

        ``fetched`` is what it downloaded (None when the download itself failed).
        """
        with self._lock:
            self._users.subtract(sha256)
            self._users = +self._users  # drop blobs nobody uses any more
            if fetched is None:
                return 0
            self._downloaded.update(
                fetched.sha256[name] for name in fetched.downloaded if name in fetched.sha256
            )
            if not self._remove:
                return 0
            ours = [name for name, sha in fetched.sha256.items() if sha in self._downloaded]
            # Under the lock: no other revision of this run can start using a blob meanwhile.
            try:
                return remove_cached_weights(fetched, ours, keep_sha256=set(self._users))
            except OSError:
                # A cache that cannot be cleaned (read-only, say) does not fail the revision.
                return 0
