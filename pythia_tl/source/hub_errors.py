"""One clear line for a download that failed part-way, whatever layer of the HTTP stack saw it.

huggingface_hub resumes a body that breaks off (with a Range request, several times) and then
lets the transport's exception through; a body that ends short after all that is an OSError
("Consistency check failed"), and a full disk is an OSError from writing into the cache. None of
these says which file of which revision was being fetched, so ``broken_download`` turns them into
a SourceError that does. Failures to reach the Hub at all are left to the caller (they mean
"offline": the cache may still serve the revision), as are HTTP error statuses.
"""

from __future__ import annotations

import errno

from huggingface_hub.errors import HfHubHTTPError

from pythia_tl.errors import Param, SourceError
from pythia_tl.text import first_line

# The HTTP stacks huggingface_hub has used; their exceptions share no common base class.
_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "requests", "urllib3", "http"})


def broken_download(exc: Exception, where: str, filename: str) -> SourceError | None:
    """The SourceError to raise for ``exc``, or None when ``exc`` is not a broken download."""
    if isinstance(exc, (HfHubHTTPError, ConnectionError)) or _means_unreachable(exc):
        return None
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return SourceError(
            f"{where}: no space left on device while downloading {filename} into the Hugging "
            "Face cache (free some space or choose another ",
            Param("cache_dir"),
            ")",
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        return SourceError(
            f"{where}: cannot write {filename} into the Hugging Face cache ({exc.strerror})"
        )
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES:
        return SourceError(
            f"{where}: the download of {filename} broke off and did not resume after retries "
            f"({first_line(exc)}); run the command again to resume it"
        )
    return None


def _means_unreachable(exc: Exception) -> bool:
    name = type(exc).__name__.lower()
    return "connect" in name or "timeout" in name
