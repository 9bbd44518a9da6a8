"""``audit``: ask the Hub about every revision of the models given, and judge what it lists.

Per model: one API call for its branches, one per revision for its files (LFS sha256 and sizes),
and a small download of each index file, never weight bytes. With ``deep``, each readable
revision's weight headers are read and its tensors fingerprinted by small byte ranges
(``audit.deep``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pythia_tl.audit.classify import Described, classify
from pythia_tl.audit.deep import fingerprint
from pythia_tl.audit.findings import AuditReport, RevisionRef
from pythia_tl.errors import PythiaTLError, SourceError
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import RevisionListing, describe_revision, list_branches
from pythia_tl.hub.revision import download_file, download_revision
from pythia_tl.source.checkpoint import open_checkpoint
from pythia_tl.source.layouts import load_weight_map
from pythia_tl.source.names import ModelName
from pythia_tl.source.schedule import CheckpointList, model_checkpoints

if TYPE_CHECKING:
    from pythia_tl.batch.step_spec import StepSpec

# Requests at once: API calls are small, and the Hub's limit is per five minutes, not per second.
_WORKERS = 8
_SHARD = re.compile(r"(?P<stem>.+)-(?P<k>\d{1,5})-of-(?P<n>\d{1,5})\.(?P<suffix>safetensors|bin)")


@dataclass(frozen=True)
class _Asked:
    """A revision to describe: where it sits in its model's list."""

    model: ModelName
    revision: str
    index: int | None
    step: int | None
    missing: bool = False

    @property
    def ref(self) -> RevisionRef:
        return RevisionRef(self.model.repo_id, self.revision)


def audit_models(
    models: Sequence[ModelName],
    steps: StepSpec,
    *,
    deep: bool = False,
    cache_dir: Path | None = None,
) -> AuditReport:
    """Audit the checkpoints of ``models`` that ``steps`` selects, and each model's main."""
    models = list(dict.fromkeys(models))
    asked: list[_Asked] = []
    finals: dict[str, str] = {}
    for model in models:
        checkpoints = model_checkpoints(model, list_branches(model.repo_id))
        if checkpoints.checkpoints:
            finals[model.repo_id] = checkpoints.checkpoints[-1].revision
        asked += _selected(checkpoints, steps)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        described = list(pool.map(lambda a: _describe(a, cache_dir), asked))
        fetched = 0
        not_fingerprinted: dict[str, str] = {}
        if deep:
            readable = [i for i, d in enumerate(described) if d[0].readable]
            prints = pool.map(lambda i: _fingerprint(described[i][1], cache_dir), readable)
            for i, (digest, nbytes, problem) in zip(readable, prints, strict=True):
                fetched += nbytes
                if problem is not None:
                    not_fingerprinted[str(described[i][0].ref)] = problem
                described[i] = (replace(described[i][0], fingerprint=digest), described[i][1])
    findings = classify([d for d, _ in described], finals)
    return AuditReport(
        tuple(model.repo_id for model in models),
        str(steps),
        deep,
        tuple(findings),
        fetched,
        not_fingerprinted,
    )


def _selected(checkpoints: CheckpointList, steps: StepSpec) -> list[_Asked]:
    model = checkpoints.model
    chosen = set(steps.select(checkpoints.steps, model.name)) if not steps.is_all else None
    asked = [
        _Asked(model, c.revision, c.index, c.step, c.missing)
        for c in checkpoints.checkpoints
        if chosen is None or c.step in chosen
    ]
    # main is always asked about: what every other revision is compared with first.
    return [*asked, _Asked(model, "main", None, None)]


def _describe(asked: _Asked, cache_dir: Path | None) -> tuple[Described, RevisionListing | None]:
    base = Described(asked.ref, asked.index, asked.step, missing=asked.missing)
    if asked.missing:
        return base, None
    try:
        listing = describe_revision(asked.model.repo_id, asked.revision)
    except HubUnreachable:
        raise
    except SourceError as exc:
        return replace(base, problem=str(exc)), None
    described = replace(base, commit=listing.commit, weights=listing.weight_sha256)
    try:
        lacking = _lacking(listing, cache_dir)
    except PythiaTLError as exc:
        return replace(described, problem=str(exc)), listing
    return replace(described, lacking=lacking), listing


def _lacking(listing: RevisionListing, cache_dir: Path | None) -> tuple[str, ...]:
    """The weight files the revision needs and lacks: those its index names, and the shards a
    shard's name (``-00002-of-00003``) says exist."""
    needed: set[str] = set()
    for name in listing.files:
        match = _SHARD.fullmatch(name)
        if match is not None and name.endswith(f".{listing.format}"):
            count = int(match["n"])
            width = len(match["k"])
            for k in range(1, min(count, 1024) + 1):
                needed.add(f"{match['stem']}-{k:0{width}d}-of-{match['n']}.{match['suffix']}")
    if listing.weights_entry.endswith(".index.json"):
        needed |= set(
            load_weight_map(download_file(listing, listing.weights_entry, cache_dir)).values()
        )
    else:
        needed.add(listing.weights_entry)
    return tuple(sorted(needed - listing.files))


def _fingerprint(
    listing: RevisionListing | None, cache_dir: Path | None
) -> tuple[str | None, int, str | None]:
    """(fingerprint, bytes fetched, why there is none)."""
    assert listing is not None  # readable revisions were listed
    try:
        fetched = download_revision(listing, cache_dir, weights=False, tokenizer=False)
        checkpoint = open_checkpoint(fetched.folder, fetched.cache_root, fetched.remote)
        found = fingerprint(checkpoint)
    except HubUnreachable:
        raise
    except PythiaTLError as exc:
        return None, 0, str(exc)
    return found.digest, found.fetched_bytes, None
