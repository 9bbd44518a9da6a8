"""The training checkpoints of a model: Pythia's known schedule, or the Hub's ``step<N>`` branches.

Checkpoint indices (TransformerLens' ``checkpoint_index``) and batch step lists refer to the
*schedule*: the known one for EleutherAI's Pythia repositories, which needs no network and is the
same on every machine (so shards of a batch agree on the work list), and the Hub's step branches
for any other repository.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pythia_tl.errors import Param, SourceError, UsageError
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import list_branches
from pythia_tl.source.names import ModelName, tokens_seen

# Digits bounded: a branch name comes from the Hub or a file, and int() of thousands refuses.
STEP_BRANCH = re.compile(r"step(\d{1,9})")

Origin = Literal["hub", "schedule"]


@dataclass(frozen=True)
class TrainingCheckpoint:
    """One checkpoint: its place in the list, its step, and the commit its branch names."""

    index: int
    step: int
    commit: str | None = None

    @property
    def revision(self) -> str:
        return f"step{self.step}"

    @property
    def tokens(self) -> int:
        return tokens_seen(self.step)


@dataclass(frozen=True)
class CheckpointList:
    """A model's checkpoints in step order, and where the list came from."""

    model: ModelName
    origin: Origin
    checkpoints: tuple[TrainingCheckpoint, ...]

    @property
    def steps(self) -> list[int]:
        return [checkpoint.step for checkpoint in self.checkpoints]

    def at_index(self, index: int) -> TrainingCheckpoint:
        """The checkpoint at a Python index (-1 is the last)."""
        count = len(self.checkpoints)
        if not -count <= index < count:
            raise UsageError(
                Param("checkpoint_index"),
                f" {index}: {self.model.name} has {count} checkpoints, so the index must be in "
                f"{-count}..{count - 1}",
            )
        return self.checkpoints[index]


def from_schedule(model: ModelName) -> CheckpointList:
    """The known Pythia schedule (no commits: they are the Hub's to say)."""
    steps = model.steps()
    return CheckpointList(
        model, "schedule", tuple(TrainingCheckpoint(i, step) for i, step in enumerate(steps))
    )


def from_branches(model: ModelName, branches: Mapping[str, str]) -> CheckpointList:
    """The ``step<N>`` branches among ``branches`` (name -> commit), in step order."""
    found = sorted(
        (int(match[1]), commit)
        for name, commit in branches.items()
        if (match := STEP_BRANCH.fullmatch(name))
    )
    if not found:
        raise SourceError(f"{model.repo_id}: the repository has no step<N> branches on the Hub")
    return CheckpointList(
        model,
        "hub",
        tuple(TrainingCheckpoint(i, step, commit) for i, (step, commit) in enumerate(found)),
    )


def hub_checkpoints(model: ModelName) -> CheckpointList:
    """The Hub's step branches and their commits when the Hub answers, else the known schedule."""
    try:
        branches = list_branches(model.repo_id)
    except HubUnreachable as exc:
        if not model.has_known_schedule:
            raise SourceError(
                f"{model.repo_id}: {exc.why}, and the checkpoints of a repository outside "
                "EleutherAI's Pythia suite are known only from its branches"
            ) from None
        return from_schedule(model)
    return from_branches(model, branches)


def checkpoint_schedule(model: ModelName) -> CheckpointList:
    """The list checkpoint indices and batch steps refer to (see the module docstring)."""
    return from_schedule(model) if model.has_known_schedule else hub_checkpoints(model)
