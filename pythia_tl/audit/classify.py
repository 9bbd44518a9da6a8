"""Findings from what the Hub lists (and, with ``--deep``, from fingerprints): which revisions
are missing or incomplete, identical to another, share weight files, or hold the same tensors.

``main`` holds the final checkpoint's weights by design, so ``main`` and the model's last
checkpoint being the same is expected, never a finding; any other revision with main's weights
is ("identical", naming main).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from pythia_tl.audit.findings import RevisionFinding, RevisionRef
from pythia_tl.audit.identity import weight_set
from pythia_tl.audit.known import explained_by


@dataclass(frozen=True)
class Described:
    """One revision as the audit saw it."""

    ref: RevisionRef
    index: int | None
    step: int | None
    commit: str | None = None
    # Weight file name -> LFS sha256 (the weights' format only).
    weights: dict[str, str] = field(default_factory=dict)
    # The branch is in the schedule but not on the Hub.
    missing: bool = False
    # Files the weights need that the revision lacks; or why its weights cannot be read at all.
    lacking: tuple[str, ...] = ()
    problem: str | None = None
    # --deep: the fingerprint of its tensors (None: not taken).
    fingerprint: str | None = None

    @property
    def readable(self) -> bool:
        return not (self.missing or self.lacking or self.problem)


def classify(described: Sequence[Described], finals: Mapping[str, str]) -> list[RevisionFinding]:
    """A finding per revision, in the order given. ``finals``: each repository's last
    checkpoint, which main is meant to equal."""
    return _Classifier(described, finals).findings()


class _Classifier:
    def __init__(self, described: Sequence[Described], finals: Mapping[str, str]) -> None:
        self.described = described
        self.order = {d.ref: position for position, d in enumerate(described)}
        # main and the last checkpoint: the true owners of the final weights.
        self.final = {RevisionRef(repo, rev) for repo, rev in finals.items()}
        self.final |= {RevisionRef(repo, "main") for repo in finals}
        readable = [d for d in described if d.readable]
        self.identical = _groups(readable, lambda d: weight_set(d.weights))
        self.same_tensors = _groups(readable, lambda d: d.fingerprint)
        self.holders: dict[str, list[RevisionRef]] = {}
        for d in readable:
            for sha in set(d.weights.values()):
                self.holders.setdefault(sha, []).append(d.ref)

    def findings(self) -> list[RevisionFinding]:
        return [_with_known(self._finding(d)) for d in self.described]

    def _finding(self, d: Described) -> RevisionFinding:
        base = RevisionFinding(d.ref, d.index, d.step, d.commit, "ok")
        if d.missing:
            return replace(base, status="missing", reason="the Hub has no such branch")
        if d.problem is not None:
            return replace(base, status="incomplete", reason=d.problem)
        if d.lacking:
            return replace(base, status="incomplete", missing_files=d.lacking)
        byte_group = self.identical.get(d.ref, [])
        twins = self._others(byte_group, d.ref)
        if twins:
            return replace(base, status="identical", same_as=twins)
        shared = {}
        for name, sha in sorted(d.weights.items()):
            holders = [r for r in self.holders.get(sha, []) if r not in byte_group]
            with_it = self._others([*holders, d.ref], d.ref)
            if with_it:
                shared[name] = with_it
        if shared:
            return replace(base, status="shares_shards", shared_files=shared)
        tensor_group = [r for r in self.same_tensors.get(d.ref, []) if r not in byte_group]
        tensor_twins = self._others([*tensor_group, d.ref], d.ref)
        if tensor_twins:
            return replace(base, status="same_tensors", same_as=tensor_twins)
        return base

    def _others(self, group: Sequence[RevisionRef], ref: RevisionRef) -> tuple[RevisionRef, ...]:
        """The members of ``group`` that make ``ref`` a finding: none when ``ref`` holds the
        final weights by right (main or the last checkpoint) and they are its own model's."""
        rest = [r for r in group if r != ref]
        if ref in self.final:
            rest = [r for r in rest if r.repo_id != ref.repo_id]
        # main first: "identical to main" is the most telling thing to say.
        return tuple(sorted(rest, key=lambda r: (r.revision != "main", self.order[r])))


def _groups(
    described: Sequence[Described], key: Callable[[Described], object]
) -> dict[RevisionRef, list[RevisionRef]]:
    """Each revision -> every revision (itself included) with the same non-empty ``key``."""
    by_key: dict[object, list[RevisionRef]] = {}
    for d in described:
        value = key(d)
        if value:
            by_key.setdefault(value, []).append(d.ref)
    return {ref: group for group in by_key.values() if len(group) > 1 for ref in group}


def _with_known(finding: RevisionFinding) -> RevisionFinding:
    if not finding.is_anomaly:
        return finding
    known = explained_by(finding.ref.repo_id, finding.ref.revision, finding.step, finding.status)
    return replace(finding, known=tuple(known))
