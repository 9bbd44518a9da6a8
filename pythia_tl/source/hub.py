"""One revision of a model on the Hugging Face Hub, through huggingface_hub.

The revision is resolved to its commit once; config.json, the index file and the small tokenizer
files of that commit go to huggingface_hub's cache (its token, endpoint and offline settings
apply), and the weight files are either downloaded there too or described as ``RemoteFile``s,
to be read by byte ranges. Offline, or when the Hub cannot be reached, the revision is served
from the cache if it is there.

Asking the Hub what a revision holds (``describe_revision``) is separate from fetching it
(``download_revision``), so a caller can decide from the listing (its commit, its files' sizes
and LFS sha256) what to fetch at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pythia_tl.errors import CheckpointError, SourceError
from pythia_tl.source.hub_errors import broken_download
from pythia_tl.source.layouts import (
    Format,
    expected_weight_files,
    load_weight_map,
    weight_files_for,
)
from pythia_tl.source.remote import RemoteFile
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES

_SHA256 = re.compile(r"[0-9a-f]{64}")


class HubUnreachable(SourceError):
    """The Hub cannot be asked: offline mode is on, or it cannot be reached."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.why = why


@dataclass(frozen=True)
class RevisionListing:
    """One revision as the Hub lists it, before anything is downloaded."""

    repo_id: str
    revision: str
    commit: str
    format: Format
    # The weights' single file or index file.
    weights_entry: str
    files: frozenset[str]
    # The LFS sha256 of every file that has one.
    lfs_sha256: dict[str, str] = field(default_factory=dict)
    # The size in bytes of every file the Hub reports one for.
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def weight_sha256(self) -> dict[str, str]:
        """The sha256 of every file of the weights' format, known before any download.

        Every shard an index can name is among them, so two revisions with the same set hold
        the same weights.
        """
        suffix = f".{self.format}"
        return {name: sha for name, sha in self.lfs_sha256.items() if name.endswith(suffix)}


@dataclass(frozen=True)
class HubRevision:
    """A revision downloaded into the cache: its snapshot folder and what the Hub said of it."""

    repo_id: str
    revision: str
    commit: str
    folder: Path
    # The sha256 the Hub (or the cache's content-addressed blob name) gives for each weight file.
    sha256: dict[str, str] = field(default_factory=dict)
    # Weight files not in the cache, to be read from the Hub by ranges (not downloaded).
    remote: dict[str, RemoteFile] = field(default_factory=dict)
    # The tokenizer files of the revision now in the cache (small; never weights).
    tokenizer_files: tuple[str, ...] = ()

    @property
    def cache_root(self) -> Path:
        """The repository's cache folder, which holds the blobs the snapshot links to."""
        return self.folder.parent.parent


def fetch_revision(
    repo_id: str,
    revision: str,
    cache_dir: Path | None = None,
    *,
    weights: bool = True,
    tokenizer: bool = True,
) -> HubRevision:
    """config.json and the weights of ``repo_id`` at ``revision``: downloaded into the cache
    (``weights``), or left on the Hub to be read by ranges; found in the cache when they are
    there already, and when the Hub cannot be asked. ``tokenizer``: also the revision's small
    tokenizer files (for a conversion; planning or verifying needs none)."""
    try:
        listing = describe_revision(repo_id, revision)
    except HubUnreachable as exc:
        return _from_cache(repo_id, revision, cache_dir, exc.why)
    return download_revision(listing, cache_dir, weights=weights, tokenizer=tokenizer)


def describe_revision(repo_id: str, revision: str) -> RevisionListing:
    """Ask the Hub for ``revision``'s commit and files (one API call, nothing downloaded)."""
    with _asking_the_hub(repo_id, revision):
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    commit = info.sha
    if commit is None:
        raise SourceError(f"{repo_id}@{revision}: the Hub did not report a commit")
    siblings = {s.rfilename: s for s in info.siblings or []}
    found = weight_files_for(set(siblings))
    if "config.json" not in siblings:
        raise SourceError(f"{repo_id}@{revision}: the revision has no config.json")
    if found is None:
        raise SourceError(
            f"{repo_id}@{revision}: no weights in the revision (expected one of "
            f"{expected_weight_files()})"
        )
    fmt, (weights_entry,) = found
    lfs_sha256 = {
        name: sibling.lfs.sha256
        for name, sibling in siblings.items()
        if sibling.lfs is not None and _SHA256.fullmatch(sibling.lfs.sha256 or "")
    }
    sizes = {
        name: size
        for name, sibling in siblings.items()
        if isinstance(size := sibling.lfs.size if sibling.lfs else sibling.size, int) and size >= 0
    }
    return RevisionListing(
        repo_id, revision, commit, fmt, weights_entry, frozenset(siblings), lfs_sha256, sizes
    )


def download_revision(
    listing: RevisionListing,
    cache_dir: Path | None = None,
    *,
    weights: bool = True,
    tokenizer: bool = True,
) -> HubRevision:
    """Download config.json and the weight files of a listed revision (cached ones are reused);
    without ``weights``, only config.json and the index: the weight files not cached are left on
    the Hub, to be read by ranges. ``tokenizer``: also its tokenizer files (a few MB)."""
    repo_id, revision, commit = listing.repo_id, listing.revision, listing.commit

    def download(filename: str, at: str = commit) -> Path:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=at, cache_dir=cache_dir))
        except RemoteEntryNotFoundError:
            raise CheckpointError(
                f"{repo_id}@{revision}: {filename} is listed but cannot be downloaded"
            ) from None
        except Exception as exc:
            broken = broken_download(exc, f"{repo_id}@{revision}", filename)
            if broken is None:
                raise
            raise broken from None

    weights_entry = listing.weights_entry
    with _asking_the_hub(repo_id, revision):
        # Asked for by revision name, so the cache records which commit the name resolved to and
        # a later offline run can find it; everything else is pinned to that commit.
        config_path = download("config.json", revision)
        if config_path.parent.name != commit:
            raise SourceError(
                f"{repo_id}@{revision}: the revision moved while downloading; try again"
            )
        names = [weights_entry]
        if weights_entry.endswith(".index.json"):
            index_path = download(weights_entry)
            shards = dict.fromkeys(load_weight_map(index_path).values())
            missing = [shard for shard in shards if shard not in listing.files]
            if missing:
                raise CheckpointError(
                    f"{repo_id}@{revision}: {weights_entry} names shard {missing[0]!r}, which "
                    "the revision does not have"
                )
            names = list(shards)
        cached = all(_in_cache(repo_id, n, commit, cache_dir) for n in names)
        # A revision wholly in the cache is read from there; otherwise by ranges, every file.
        remote = {} if weights or cached else {n: _remote_file(listing, n) for n in names}
        for name in names:
            if name not in remote:
                download(name)
        # The tokenizer travels with the weights: a file converted from this revision can then
        # be loaded with its tokenizer offline.
        tokenizer_files = tuple(
            name for name in TOKENIZER_FILES if tokenizer and name in listing.files
        )
        for name in tokenizer_files:
            download(name)
    sha256 = {name: listing.lfs_sha256[name] for name in names if name in listing.lfs_sha256}
    return HubRevision(
        repo_id, revision, commit, config_path.parent, sha256, remote, tokenizer_files
    )


def _in_cache(repo_id: str, name: str, commit: str, cache_dir: Path | None) -> bool:
    found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=commit)
    return isinstance(found, str)


def _remote_file(listing: RevisionListing, name: str) -> RemoteFile:
    size = listing.sizes.get(name)
    if size is None:
        raise SourceError(
            f"{listing.repo_id}@{listing.revision}: the Hub reports no size for {name}; it cannot "
            "be read by ranges"
        )
    return RemoteFile(listing.repo_id, listing.commit, name, size, listing.lfs_sha256.get(name))


def list_branches(repo_id: str) -> dict[str, str]:
    """Every branch of ``repo_id`` and the commit it points to (one API call)."""
    with _asking_the_hub(repo_id, None):
        refs = HfApi().list_repo_refs(repo_id)
    return {branch.name: branch.target_commit for branch in refs.branches}


def cached_commit(repo_id: str, revision: str, cache_dir: Path | None = None) -> str | None:
    """The commit the cache last saw ``revision`` resolve to, or None (no network)."""
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    return Path(config).parent.name if isinstance(config, str) else None


@contextmanager
def _asking_the_hub(repo_id: str, revision: str | None) -> Iterator[None]:
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


def _from_cache(repo_id: str, revision: str, cache_dir: Path | None, why: str) -> HubRevision:
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OfflineModeIsEnabled, ValueError):
        raise SourceError(
            f"{repo_id}@{revision}: {why} and this revision is not in the local cache"
        ) from None
    if not _weights_cached(folder):
        raise SourceError(
            f"{repo_id}@{revision}: {why}, and the weights of this revision are not in the "
            "local cache (streamed conversions do not store them); read them from the Hub "
            "with it reachable and offline mode off, or keep the downloads"
        )
    sha256 = {}
    for path in folder.iterdir():
        # The cache stores large files under their sha256; the link's target names it.
        blob = path.resolve().name
        if path.is_symlink() and _SHA256.fullmatch(blob):
            sha256[path.name] = blob
    tokenizer_files = tuple(name for name in TOKENIZER_FILES if (folder / name).is_file())
    return HubRevision(
        repo_id, revision, folder.name, folder, sha256, tokenizer_files=tokenizer_files
    )


def _weights_cached(folder: Path) -> bool:
    """Whether a cached snapshot holds its weights: the single file, or every shard its index
    names (a streamed conversion caches config.json and the index, not the weights)."""
    found = weight_files_for({path.name for path in folder.iterdir()})
    if found is None:
        return False
    _, (entry,) = found
    if not entry.endswith(".index.json"):
        return True
    try:
        shards = set(load_weight_map(folder / entry).values())
    except CheckpointError:
        return True  # opening the checkpoint reports what is wrong with the index
    return all((folder / shard).is_file() for shard in shards)


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
