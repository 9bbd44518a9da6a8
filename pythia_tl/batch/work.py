"""The batch's work list: one item per (model, checkpoint branch), where each output goes, and
sharding.

The list is sorted by repository id, then training order (step branches by step, then branches
named by a token count, such as RedPajama-INCITE's ``240b_tokens``, by that count), so every
machine that runs the same command builds the same list; shard ``K/N`` then takes items K-1,
K-1+N, K-1+2N, ... (round-robin, so each shard gets a similar mix of early and late checkpoints
and of model sizes), and shards 1..N together cover every item exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pythia_tl.errors import Param, UsageError
from pythia_tl.source.names import ModelName
from pythia_tl.source.schedule import TrainingCheckpoint, training_order

T = TypeVar("T")

# At most 9 digits a side: far more shards than machines, and int() never sees thousands.
_SHARD = re.compile(r"\s*([0-9]{1,9})\s*/\s*([0-9]{1,9})\s*")


@dataclass(frozen=True, order=True)
class WorkItem:
    """One revision to convert: a checkpoint branch of a repository."""

    repo_id: str
    # Where the checkpoint sorts in training (source.schedule.training_order): (0, step) for a
    # step branch, (1, tokens) for one named by a token count.
    position: tuple[int, int]
    revision: str
    # The training step the branch names; None for one named by tokens (never a token count).
    step: int | None = field(compare=False)

    @classmethod
    def of(cls, repo_id: str, checkpoint: TrainingCheckpoint) -> WorkItem:
        return cls(repo_id, training_order(checkpoint), checkpoint.revision, checkpoint.step)

    @property
    def model(self) -> ModelName:
        return ModelName(self.repo_id)

    @property
    def label(self) -> str:
        return f"{self.model.name} {self.revision}"

    @property
    def relative_output(self) -> Path:
        """``<model-name>/<revision>.safetensors``, relative to the batch's output folder."""
        return Path(self.model.name) / f"{self.revision}.safetensors"


@dataclass(frozen=True)
class Shard:
    """``K/N``: the K-th (1-based) of N disjoint parts of the work list."""

    index: int
    count: int

    def take(self, items: Sequence[T]) -> list[T]:
        return [
            item for position, item in enumerate(items) if position % self.count == self.index - 1
        ]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    match = _SHARD.fullmatch(text)
    if match is None:
        raise UsageError(Param("shard"), f" {text!r}: expected K/N, e.g. 1/4 (K counts from 1)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise UsageError(Param("shard"), f" {text!r}: K must be between 1 and N, and N at least 1")
    return Shard(index, count)


def sorted_items(selected: Mapping[str, Iterable[TrainingCheckpoint]]) -> list[WorkItem]:
    """Every (repository, checkpoint) pair, sorted, from each repository's selected ones."""
    return sorted(
        WorkItem.of(repo_id, checkpoint)
        for repo_id, checkpoints in selected.items()
        for checkpoint in checkpoints
    )


def check_distinct_folders(models: Sequence[ModelName]) -> None:
    """Refuse two repositories whose outputs would share ``<model-name>/``."""
    seen: dict[str, str] = {}
    for model in models:
        other = seen.setdefault(model.name, model.repo_id)
        if other != model.repo_id:
            raise UsageError(
                f"{other} and {model.repo_id} would both write to {model.name}/: convert them "
                "into different output folders"
            )
