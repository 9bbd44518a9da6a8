"""The Hub's failures in the caller's terms: one line naming the repository, revision or file.

``asking_the_hub`` turns huggingface_hub's errors into SourceErrors (``HubUnreachable`` when the
Hub cannot be asked at all, so that the cache may serve instead).

A download that failed part-way, whatever layer of the HTTP stack saw it, needs the same:

huggingface_hub resumes a body that breaks off (with a Range request, several times) and then
lets the transport's exception through; a body that ends short after all that is an OSError
("Consistency check failed"), and a full disk is an OSError from writing into the cache. None of
these says which file of which revision was being fetched, so ``broken_download`` turns them into
a SourceError that does. Failures to reach the Hub at all are left to the caller (they mean
"offline": the cache may still serve the revision), as are HTTP error statuses.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pythia_tl.errors import Param, SourceError, SourceUnavailable
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


class HubUnreachable(SourceUnavailable):
    """The Hub cannot be asked: offline mode is on, or it cannot be reached."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.why = why


@contextmanager
def asking_the_hub(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's errors into one-line SourceErrors; HubUnreachable when offline."""
    where = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubUnreachable(where, "offline mode is on") from None
    except ConnectionError as exc:
        raise HubUnreachable(where, _unreachable(exc)) from None
    except HfHubHTTPError as exc:
        raise _explain(exc, repo_id, revision) from None
    except Exception as exc:  # httpx transport errors are not all ConnectionError subclasses
        name = type(exc).__name__.lower()
        if "connect" not in name and "timeout" not in name:
            raise
        raise HubUnreachable(where, _unreachable(exc)) from None


def _unreachable(exc: BaseException) -> str:
    return f"the Hub cannot be reached ({type(exc).__name__})"


def _explain(exc: HfHubHTTPError, repo_id: str, revision: str | None) -> SourceError:
    if isinstance(exc, GatedRepoError):
        return SourceError(
            f"{repo_id}: the repository is gated; log in with a token that has access"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return SourceError(
            f"{repo_id}: repository not found on the Hub (check the name; log in if it is private)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return SourceError(f"{repo_id}: revision {revision!r} not found on the Hub")
    status = exc.response.status_code if getattr(exc, "response", None) is not None else "?"
    where = repo_id if revision is None else f"{repo_id}@{revision}"
    return SourceError(f"{where}: the Hub answered HTTP {status}")
