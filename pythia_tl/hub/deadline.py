"""huggingface_hub's downloads given a deadline.

``hf_hub_download`` sleeps out a 429's ``Retry-After`` or ``RateLimit`` reset however long it is
(its ``http_backoff`` has no cap) and reads a body at whatever pace the Hub sends it (its timeout
is per read), so the Hub decides how long it waits. Our own requests cap both
(``pythia_tl.hub.location``, ``pythia_tl.hub.transport``); huggingface_hub's cannot be capped from
outside, nor can a thread be stopped. So the download runs on a thread of its own and is given up
on, left to end by itself, once its deadline passes: ``MAX_RETRY_AFTER`` for one wait, plus the
file's announced size at ``MIN_BYTES_PER_SECOND``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

from pythia_tl.errors import HubSlow, SourceError
from pythia_tl.hub.transport import MAX_RETRY_AFTER, MIN_BYTES_PER_SECOND

T = TypeVar("T")

# Seconds a download may take beyond its bytes at the minimum rate: one capped wait, and the
# requests' own timeouts.
DOWNLOAD_GRACE = MAX_RETRY_AFTER + 30.0
# Seconds without an answer after which the wait is said (once).
SAY_AFTER = 15.0


def download_deadline(size: int | None) -> float:
    """Seconds a download of a file of ``size`` bytes (None: not announced) may take in all."""
    return DOWNLOAD_GRACE + (size or 0) / MIN_BYTES_PER_SECOND


def within_deadline(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``'s result or exception, or a SourceError naming ``what`` once ``seconds`` have
    passed without one (the call goes on, on its own daemon thread, until it ends).

    A stop signal still reaches the caller at once: only the main thread waits, on an event."""
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller, whatever it is
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="pythia-tl-hub-download", daemon=True).start()
    said_after = min(SAY_AFTER, seconds)
    if not done.wait(said_after):
        if seconds > said_after:
            warnings.warn(
                HubSlow(
                    f"{what}: nothing from the Hub after {said_after:.0f} s (it is rate-limiting, "
                    f"or sending slowly); giving up after {seconds:.0f} s"
                ),
                stacklevel=2,
            )
        if not done.wait(seconds - said_after):
            raise SourceError(
                f"{what}: not downloaded within {seconds:.0f} s (the Hub kept the download "
                "waiting: a rate limit, or too slow an answer); run the command again later"
            )
    if failure:
        raise failure[0]
    return outcome[0]
