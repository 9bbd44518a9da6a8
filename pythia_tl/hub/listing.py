"""What a Hub revision holds, asked of the Hub before anything is downloaded: its commit, its
files, their sizes and LFS sha256 (one API call), and a repository's branches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from huggingface_hub import HfApi

from pythia_tl.errors import SourceError
from pythia_tl.hub.errors import asking_the_hub
from pythia_tl.hub.refs import checked_commit, repo_id_problem, revision_problem
from pythia_tl.source.layouts import Format, expected_weight_files, weight_files_for
from pythia_tl.text import first_line, printable

_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOB_ID = re.compile(r"[0-9a-f]{40}")


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
    # The git blob id of every file the Hub reports one for: equal ids, equal bytes.
    blob_ids: dict[str, str] = field(default_factory=dict)

    @property
    def weight_sha256(self) -> dict[str, str]:
        """The sha256 of every file of the weights' format, known before any download.

        Every shard an index can name is among them, so two revisions with the same set hold
        the same weights.
        """
        suffix = f".{self.format}"
        return {name: sha for name, sha in self.lfs_sha256.items() if name.endswith(suffix)}


@contextmanager
def _reading_the_listing(where: str) -> Iterator[None]:
    """A listing that is not JSON, nests without end or has another shape than a listing's:
    one SourceError, not the decoder's or huggingface_hub's exception."""
    try:
        yield
    except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as exc:
        raise SourceError(
            f"{where}: the Hub's answer is not a listing that can be read ({first_line(exc)})"
        ) from None


def describe_revision(repo_id: str, revision: str) -> RevisionListing:
    """Ask the Hub for ``revision``'s commit and files (one API call, nothing downloaded)."""
    _check_names(repo_id, revision)
    with asking_the_hub(repo_id, revision), _reading_the_listing(f"{repo_id}@{revision}"):
        return _listing(repo_id, revision)


def _listing(repo_id: str, revision: str) -> RevisionListing:
    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    commit = info.sha
    if commit is None:
        raise SourceError(f"{repo_id}@{revision}: the Hub did not report a commit")
    commit = checked_commit(commit, f"{repo_id}@{revision}")
    siblings = {s.rfilename: s for s in info.siblings or []}
    if not all(isinstance(name, str) for name in siblings):
        raise SourceError(f"{repo_id}@{revision}: the Hub lists a file name that is not text")
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
    blob_ids = {
        name: sibling.blob_id
        for name, sibling in siblings.items()
        if isinstance(sibling.blob_id, str) and _BLOB_ID.fullmatch(sibling.blob_id)
    }
    return RevisionListing(
        repo_id,
        revision,
        commit,
        fmt,
        weights_entry,
        frozenset(siblings),
        lfs_sha256,
        sizes,
        blob_ids,
    )


def list_branches(repo_id: str) -> dict[str, str]:
    """Every branch of ``repo_id`` and the commit it points to (one API call); a branch name
    git would refuse, or a commit that is not 40 hex digits, is refused."""
    _check_names(repo_id, None)
    with asking_the_hub(repo_id, None), _reading_the_listing(repo_id):
        refs = HfApi().list_repo_refs(repo_id)
        branches: dict[str, str] = {}
        for branch in refs.branches:
            name = branch.name
            if not isinstance(name, str) or (problem := revision_problem(name)) is not None:
                shown = printable(repr(name)[:60])
                raise SourceError(
                    f"{repo_id}: the Hub listed branch {shown}: {problem or 'not text'}"
                )
            branches[name] = checked_commit(branch.target_commit, f"{repo_id}@{name}")
    return branches


def _check_names(repo_id: str, revision: str | None) -> None:
    """Names that reach huggingface_hub (and its cache's paths) only once checked; callers
    check what the user gave, so these name no flag."""
    if (problem := repo_id_problem(repo_id)) is not None:
        raise SourceError(f"{repo_id!r}: not a Hub repository id: {problem}")
    if revision is not None and (problem := revision_problem(revision)) is not None:
        raise SourceError(f"{repo_id}@{revision!r}: not a revision: {problem}")
