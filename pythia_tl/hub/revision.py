"""One revision of a model on the Hugging Face Hub, fetched through huggingface_hub.

The revision is resolved to its commit once (``pythia_tl.hub.listing``); config.json, the index
file and the small tokenizer files of that commit go to huggingface_hub's cache (its token,
endpoint and offline settings apply), and the weight files are either downloaded there too or
described as ``RemoteFile``s, to be read by byte ranges. Offline, or when the Hub cannot be
reached, the revision is served from the cache if it is there.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
)

from pythia_tl.errors import CheckpointError, SourceError, SourceUnavailable
from pythia_tl.hub.deadline import download_deadline, within_deadline
from pythia_tl.hub.errors import HubUnreachable, asking_the_hub, broken_download
from pythia_tl.hub.listing import RevisionListing, describe_revision
from pythia_tl.hub.refs import COMMIT, checked_commit
from pythia_tl.hub.remote import RemoteFile
from pythia_tl.hub.transport import StorageClient
from pythia_tl.source.config import MAX_CONFIG_BYTES
from pythia_tl.source.layouts import MAX_INDEX_BYTES, load_weight_map, weight_files_for
from pythia_tl.source.tokenizer_files import MAX_TOKENIZER_FILE_BYTES, TOKENIZER_FILES

_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    # The commit they are cached at: this one, or an earlier one's whose files are the same bytes.
    tokenizer_commit: str | None = None

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


def download_revision(
    listing: RevisionListing,
    cache_dir: Path | None = None,
    *,
    weights: bool = True,
    tokenizer: bool = True,
    tokenizers: CachedTokenizers | None = None,
) -> HubRevision:
    """Download config.json and the weight files of a listed revision (cached ones are reused);
    without ``weights``, only config.json and the index: the weight files not cached are left on
    the Hub, to be read by ranges. ``tokenizer``: also its tokenizer files (a few MB), unless
    ``tokenizers`` has the same ones cached already."""
    repo_id, revision, commit = listing.repo_id, listing.revision, listing.commit

    def download(filename: str, at: str = commit) -> Path:
        return download_file(listing, filename, cache_dir, at=at, weights=filename in names)

    weights_entry = listing.weights_entry
    names = [] if weights_entry.endswith(".index.json") else [weights_entry]
    with asking_the_hub(repo_id, revision):
        # Asked for by revision name, so the cache records which commit the name resolved to and
        # a later offline run can find it; everything else is pinned to that commit.
        config_path = download("config.json", revision)
        if config_path.parent.name != commit:
            raise SourceError(
                f"{repo_id}@{revision}: the revision moved while downloading; try again"
            )
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
        # One client for the revision's files: their ranges share its connections.
        client = StorageClient()
        remote = {} if weights or cached else {n: _remote_file(listing, n, client) for n in names}
        for name in names:
            if name not in remote:
                download(name)
        # The tokenizer travels with the weights: a file converted from this revision can then
        # be loaded with its tokenizer offline.
        tokenizer_files = tuple(
            name for name in TOKENIZER_FILES if tokenizer and name in listing.files
        )
        tokenizer_commit = tokenizers.commit_for(listing, tokenizer_files) if tokenizers else None
        if tokenizer_commit is None:
            for name in tokenizer_files:
                download(name)
            tokenizer_commit = commit
            if tokenizers is not None:
                tokenizers.add(listing, tokenizer_files)
    sha256 = {name: listing.lfs_sha256[name] for name in names if name in listing.lfs_sha256}
    return HubRevision(
        repo_id,
        revision,
        commit,
        config_path.parent,
        sha256,
        remote,
        tokenizer_files,
        tokenizer_commit,
    )


def download_file(
    listing: RevisionListing,
    filename: str,
    cache_dir: Path | None = None,
    *,
    at: str | None = None,
    weights: bool = False,
) -> Path:
    """One file of a listed revision, downloaded into the cache (at the listed commit, or
    ``at``: a revision name): refused by its listed size first (unless ``weights``), given up
    on at its deadline, its failures in the caller's terms (HubUnreachable when the Hub
    cannot be asked)."""
    repo_id, revision = listing.repo_id, listing.revision
    check_announced_size(listing, filename, weights=weights)
    at = listing.commit if at is None else at
    # Outside the handlers below, which name a missing or broken file before it is explained.
    with asking_the_hub(repo_id, revision):
        try:
            return Path(
                within_deadline(
                    lambda: hf_hub_download(repo_id, filename, revision=at, cache_dir=cache_dir),
                    download_deadline(listing.sizes.get(filename)),
                    f"{repo_id}@{revision}: {filename}",
                )
            )
        except RemoteEntryNotFoundError:
            raise CheckpointError(
                f"{repo_id}@{revision}: {filename} is listed but cannot be downloaded"
            ) from None
        except Exception as exc:
            broken = broken_download(exc, f"{repo_id}@{revision}", filename)
            if broken is None:
                raise
            raise broken from None


class CachedTokenizers:
    """The tokenizer files a run has put in the cache, by their git blob ids: a later revision
    of the same repository whose tokenizer files are the same bytes records those instead of
    downloading them again (six resolver requests a revision, across a suite's 154)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commits: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def commit_for(self, listing: RevisionListing, files: tuple[str, ...]) -> str | None:
        key = _tokenizer_key(listing, files)
        with self._lock:
            return self._commits.get(key) if key is not None else None

    def add(self, listing: RevisionListing, files: tuple[str, ...]) -> None:
        key = _tokenizer_key(listing, files)
        if key is not None:
            with self._lock:
                self._commits.setdefault(key, listing.commit)


def _tokenizer_key(
    listing: RevisionListing, files: tuple[str, ...]
) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    if not files or any(name not in listing.blob_ids for name in files):
        return None
    return listing.repo_id, tuple((name, listing.blob_ids[name]) for name in files)


def _small_file_cap(name: str) -> int:
    if name == "config.json":
        return MAX_CONFIG_BYTES
    if name.endswith(".index.json"):
        return MAX_INDEX_BYTES
    return MAX_TOKENIZER_FILE_BYTES


def check_announced_size(listing: RevisionListing, name: str, *, weights: bool) -> None:
    """CheckpointError when the listing announces a small file (config.json, an index, a
    tokenizer file) larger than it may be read: refused before a byte is downloaded."""
    size = listing.sizes.get(name)
    if weights or size is None:
        return
    cap = _small_file_cap(name)
    if size > cap:
        raise CheckpointError(
            f"{listing.repo_id}@{listing.revision}: the Hub lists {name} at {size} bytes, more "
            f"than the {cap} a {name} may have; not downloaded"
        )


def _in_cache(repo_id: str, name: str, commit: str, cache_dir: Path | None) -> bool:
    found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=commit)
    return isinstance(found, str)


def _remote_file(listing: RevisionListing, name: str, client: StorageClient) -> RemoteFile:
    size = listing.sizes.get(name)
    if size is None:
        raise SourceError(
            f"{listing.repo_id}@{listing.revision}: the Hub reports no size for {name}; it cannot "
            "be read by ranges"
        )
    sha256 = listing.lfs_sha256.get(name)
    return RemoteFile(listing.repo_id, listing.commit, name, size, sha256, client)


def cached_commit(repo_id: str, revision: str, cache_dir: Path | None = None) -> str | None:
    """The commit the cache last saw ``revision`` resolve to, or None (no network)."""
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    if not isinstance(config, str) or not COMMIT.fullmatch(Path(config).parent.name):
        return None
    return Path(config).parent.name


def _from_cache(repo_id: str, revision: str, cache_dir: Path | None, why: str) -> HubRevision:
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OfflineModeIsEnabled, ValueError):
        raise SourceUnavailable(
            f"{repo_id}@{revision}: {why} and this revision is not in the local cache"
        ) from None
    if not _weights_cached(folder):
        raise SourceUnavailable(
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
    # The cache's refs file names the snapshot: a commit only once it is 40 hex digits.
    commit = checked_commit(folder.name, f"{repo_id}@{revision} (in the local cache)")
    return HubRevision(repo_id, revision, commit, folder, sha256, tokenizer_files=tokenizer_files)


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
