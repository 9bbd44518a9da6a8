"""Fetching one revision of a model from the Hugging Face Hub through huggingface_hub.

The revision is resolved to its commit once; config.json and the weight files of that commit are
then downloaded into huggingface_hub's cache (its token, endpoint and offline settings apply), and
nothing else is. Offline, or when the Hub cannot be reached, the revision is served from the
cache if it is there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
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
from pythia_tl.source.checkpoint import _load_weight_map, weight_files_for

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

    @property
    def cache_root(self) -> Path:
        """The repository's cache folder, which holds the blobs the snapshot links to."""
        return self.folder.parent.parent


def fetch_revision(repo_id: str, revision: str, cache_dir: Path | None = None) -> HubRevision:
    """Download config.json and the weights of ``repo_id`` at ``revision`` (or find them cached)."""
    try:
        return _fetch_online(repo_id, revision, cache_dir)
    except (OfflineModeIsEnabled, ConnectionError) as exc:
        offline_reason = exc
    except HfHubHTTPError as exc:
        raise _explain(exc, repo_id, revision) from None
    except Exception as exc:  # httpx transport errors are not all ConnectionError subclasses
        if (
            "connect" not in type(exc).__name__.lower()
            and "timeout" not in type(exc).__name__.lower()
        ):
            raise
        offline_reason = exc
    return _from_cache(repo_id, revision, cache_dir, offline_reason)


def _fetch_online(repo_id: str, revision: str, cache_dir: Path | None) -> HubRevision:
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
            f"{repo_id}@{revision}: no weights in the revision (expected model.safetensors or "
            "pytorch_model.bin, alone or sharded with an index)"
        )

    def download(filename: str, at: str = commit) -> Path:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=at, cache_dir=cache_dir))
        except RemoteEntryNotFoundError:
            raise CheckpointError(
                f"{repo_id}@{revision}: {filename} is listed but cannot be downloaded"
            ) from None

    _, (weights_entry,) = found
    # Asked for by revision name, so the cache records which commit the name resolved to and a
    # later offline run can find it; everything else is pinned to that commit.
    config_path = download("config.json", revision)
    if config_path.parent.name != commit:
        raise SourceError(f"{repo_id}@{revision}: the revision moved while downloading; try again")
    names = [weights_entry]
    if weights_entry.endswith(".index.json"):
        index_path = download(weights_entry)
        shards = dict.fromkeys(_load_weight_map(index_path).values())
        missing = [shard for shard in shards if shard not in siblings]
        if missing:
            raise CheckpointError(
                f"{repo_id}@{revision}: {weights_entry} names shard {missing[0]!r}, which the "
                "revision does not have"
            )
        names = list(shards)
    for name in names:
        download(name)
    sha256 = {
        name: siblings[name].lfs.sha256
        for name in names
        if siblings[name].lfs is not None and _SHA256.fullmatch(siblings[name].lfs.sha256 or "")
    }
    return HubRevision(repo_id, revision, commit, config_path.parent, sha256)


def _from_cache(
    repo_id: str, revision: str, cache_dir: Path | None, reason: BaseException
) -> HubRevision:
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OfflineModeIsEnabled, ValueError):
        why = (
            "offline mode is on"
            if isinstance(reason, OfflineModeIsEnabled)
            else (f"the Hub cannot be reached ({type(reason).__name__})")
        )
        raise SourceError(
            f"{repo_id}@{revision}: {why} and this revision is not in the local cache"
        ) from None
    sha256 = {}
    for path in folder.iterdir():
        # The cache stores large files under their sha256; the link's target names it.
        blob = path.resolve().name
        if path.is_symlink() and _SHA256.fullmatch(blob):
            sha256[path.name] = blob
    return HubRevision(repo_id, revision, folder.name, folder, sha256)


def _explain(exc: HfHubHTTPError, repo_id: str, revision: str) -> SourceError:
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
    return SourceError(f"{repo_id}@{revision}: the Hub answered HTTP {status}")
