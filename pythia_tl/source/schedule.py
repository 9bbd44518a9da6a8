"""The training checkpoints of a model: Pythia's known schedule, or the Hub's checkpoint branches.

Checkpoint indices (TransformerLens' ``checkpoint_index``) and batch step lists refer to the
*schedule*. For EleutherAI's Pythia repositories it is the known one, in TransformerLens'
``PYTHIA_CHECKPOINTS`` order (154 steps, 143 for ``-v0``): it needs no network, is the same on
every machine (so shards of a batch agree on the work list), and a branch the Hub lacks is listed
as missing, never renumbered. Any other repository's schedule is its own branches that name a
checkpoint, ``step<N>`` or a token count such as RedPajama-INCITE's ``240b_tokens``, sorted by
the number they carry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pythia_tl.errors import Param, SourceError, UsageError
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import list_branches
from pythia_tl.source.names import ModelName, tokens_seen

# Digits bounded: a branch name comes from the Hub or a file, and int() of thousands refuses.
STEP_BRANCH = re.compile(r"step(\d{1,9})")
# A branch named by the tokens its checkpoint has seen: 240b_tokens, 1t_tokens, 800B-tokens.
TOKEN_BRANCH = re.compile(r"(\d{1,6})([kmbt])[_-]?tokens", re.IGNORECASE)
_TOKEN_UNITS = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}

# "schedule": the known schedule, the Hub not asked (or not reachable); "schedule+hub": the
# known schedule, with the Hub's commits and missing branches; "hub": the Hub's branches.
Origin = Literal["hub", "schedule", "schedule+hub"]


@dataclass(frozen=True)
class TrainingCheckpoint:
    """One checkpoint: its place in the list, its branch, the step or token count its name
    carries, and the commit the branch names (None: not asked, or missing)."""

    index: int
    revision: str
    step: int | None
    tokens: int | None
    commit: str | None = None
    # Whether the Hub has the branch; None when the Hub was not asked.
    on_hub: bool | None = None

    @property
    def missing(self) -> bool:
        """A branch of the known schedule that the Hub lacks."""
        return self.on_hub is False


def checkpoint_branch(name: str) -> TrainingCheckpoint | None:
    """The checkpoint a branch name describes (index 0), or None when it names none."""
    if match := STEP_BRANCH.fullmatch(name):
        step = int(match[1])
        return TrainingCheckpoint(0, name, step, tokens_seen(step))
    if match := TOKEN_BRANCH.fullmatch(name):
        return TrainingCheckpoint(0, name, None, int(match[1]) * _TOKEN_UNITS[match[2].lower()])
    return None


def training_order(checkpoint: TrainingCheckpoint) -> tuple[int, int]:
    """Where a checkpoint sorts: step branches by step, then token branches by token count."""
    if checkpoint.step is not None:
        return 0, checkpoint.step
    return 1, checkpoint.tokens or 0


@dataclass(frozen=True)
class CheckpointList:
    """A model's checkpoints in training order, and where the list came from."""

    model: ModelName
    origin: Origin
    checkpoints: tuple[TrainingCheckpoint, ...]

    @property
    def steps(self) -> list[int]:
        """The steps of the step branches (token-named ones carry none)."""
        return [c.step for c in self.checkpoints if c.step is not None]

    @property
    def revisions(self) -> list[str]:
        return [checkpoint.revision for checkpoint in self.checkpoints]

    @property
    def missing(self) -> list[TrainingCheckpoint]:
        return [checkpoint for checkpoint in self.checkpoints if checkpoint.missing]

    def index_of(self, revision: str) -> int | None:
        """The index of ``revision`` in the list (None when it is not one of them)."""
        for checkpoint in self.checkpoints:
            if checkpoint.revision == revision:
                return checkpoint.index
        return None

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
        model,
        "schedule",
        tuple(
            TrainingCheckpoint(i, f"step{step}", step, tokens_seen(step))
            for i, step in enumerate(steps)
        ),
    )


def with_branches(schedule: CheckpointList, branches: Mapping[str, str]) -> CheckpointList:
    """The known schedule with each branch's commit, and the branches the Hub lacks marked
    missing (their indices stay)."""
    checkpoints = tuple(
        replace(c, commit=branches.get(c.revision), on_hub=c.revision in branches)
        for c in schedule.checkpoints
    )
    return CheckpointList(schedule.model, "schedule+hub", checkpoints)


def from_branches(model: ModelName, branches: Mapping[str, str]) -> CheckpointList:
    """The checkpoint branches among ``branches`` (name -> commit), in training order."""
    found = sorted(
        (
            replace(checkpoint, commit=commit, on_hub=True)
            for name, commit in branches.items()
            if (checkpoint := checkpoint_branch(name)) is not None
        ),
        key=training_order,
    )
    if not found:
        raise SourceError(
            f"{model.repo_id}: the repository has no checkpoint branches on the Hub (step<N>, "
            "or a token count such as 240b_tokens)"
        )
    return CheckpointList(model, "hub", tuple(replace(c, index=i) for i, c in enumerate(found)))


def model_checkpoints(model: ModelName, branches: Mapping[str, str]) -> CheckpointList:
    """The checkpoint list of ``model`` given the Hub's branches (see the module docstring)."""
    if model.has_known_schedule:
        return with_branches(from_schedule(model), branches)
    return from_branches(model, branches)


def hub_checkpoints(model: ModelName) -> CheckpointList:
    """The checkpoint list with the Hub's commits when the Hub answers, else the known schedule."""
    try:
        branches = list_branches(model.repo_id)
    except HubUnreachable as exc:
        if not model.has_known_schedule:
            raise SourceError(
                f"{model.repo_id}: {exc.why}, and the checkpoints of a repository outside "
                "EleutherAI's Pythia suite are known only from its branches"
            ) from None
        return from_schedule(model)
    return model_checkpoints(model, branches)


def checkpoint_schedule(model: ModelName) -> CheckpointList:
    """The list checkpoint indices and batch steps refer to (see the module docstring)."""
    return from_schedule(model) if model.has_known_schedule else hub_checkpoints(model)
