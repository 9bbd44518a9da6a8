"""Resolving what the user named (a folder, a repo id, a short name, a step) to an opened
checkpoint and the provenance the output records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pythia_tl.errors import Param, UsageError
from pythia_tl.hub.refs import checked_revision
from pythia_tl.source.checkpoint import Checkpoint, open_checkpoint
from pythia_tl.source.names import ModelName, resolve_model_name, step_revision
from pythia_tl.source.tokenizer_files import folder_tokenizer, hub_tokenizer

if TYPE_CHECKING:
    from pythia_tl.hub.revision import HubRevision


@dataclass(frozen=True)
class Provenance:
    """What a conversion was made from, as recorded in the output's metadata."""

    source: str
    model_name: str
    repo_id: str | None
    revision: str | None
    commit: str | None
    # The sha256 the Hub announced for each weight file; downloads are checked against it.
    expected_sha256: dict[str, str] = field(default_factory=dict)
    # Where the tokenizer files are (see source.tokenizer_files); None when there are none.
    tokenizer: dict[str, Any] | None = None


@dataclass(frozen=True)
class ResolvedSource:
    checkpoint: Checkpoint
    provenance: Provenance


def resolve_source(
    source: str,
    revision: str | None = None,
    step: int | None = None,
    cache_dir: Path | None = None,
    checkpoint_index: int | None = None,
    *,
    download: bool = False,
    tokenizer: bool = True,
) -> ResolvedSource:
    """Open ``source``: a folder, a Hub repo id, or a short name such as ``pythia-70m``.

    ``checkpoint_index`` is TransformerLens' ``checkpoint_index``: an index into the model's
    checkpoint schedule (-1 the last). A Hub revision's weights are read from the cache when they
    are there; otherwise they are downloaded into it (``download``) or read from the Hub by
    byte ranges, headers first, without being stored. ``tokenizer``: also put the revision's
    tokenizer files in the cache, as a conversion does (planning and verifying pass False).
    """
    given = {"revision": revision, "step": step, "checkpoint_index": checkpoint_index}
    chosen = [Param(name) for name, value in given.items() if value is not None]
    if len(chosen) > 1:
        raise UsageError(chosen[0], " and ", chosen[1], " are alternatives: give one of them")
    folder = Path(source).expanduser()
    if folder.is_dir():
        if chosen:
            raise UsageError(f"{source} is a local folder: ", chosen[0], " applies to Hub sources")
        folder = folder.resolve()
        provenance = Provenance(
            str(folder), folder.name, None, None, None, tokenizer=folder_tokenizer(folder)
        )
        return ResolvedSource(open_checkpoint(folder), provenance)
    if source.startswith((".", "/", "~")) or folder.exists():
        raise UsageError(f"{source}: no such folder")
    # Imported here: a folder source needs no Hub client, whose import is slow.
    from pythia_tl.hub.revision import fetch_revision
    from pythia_tl.source.schedule import checkpoint_schedule

    model = resolve_model_name(source)
    if checkpoint_index is not None:
        revision = checkpoint_schedule(model).at_index(checkpoint_index).revision
    if revision is not None:
        checked_revision(revision)
    rev = step_revision(step, model) if step is not None else (revision or "main")
    return open_hub_revision(
        model, fetch_revision(model.repo_id, rev, cache_dir, weights=download, tokenizer=tokenizer)
    )


def open_hub_revision(model: ModelName, fetched: HubRevision) -> ResolvedSource:
    """Open a fetched revision (from the cache, or from the Hub by ranges), recording where it
    came from."""
    provenance = Provenance(
        source=model.repo_id,
        model_name=model.name,
        repo_id=model.repo_id,
        revision=fetched.revision,
        commit=fetched.commit,
        expected_sha256=fetched.sha256,
        tokenizer=hub_tokenizer(
            model.repo_id, fetched.tokenizer_commit or fetched.commit, fetched.tokenizer_files
        ),
    )
    return ResolvedSource(
        open_checkpoint(fetched.folder, fetched.cache_root, fetched.remote), provenance
    )
