"""A batch request and its work list: this shard's revisions, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pythia_tl.batch.step_spec import StepSpec
from pythia_tl.batch.work import Shard, WorkItem, check_distinct_folders, sorted_items
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.errors import Param, SourceError, UsageError
from pythia_tl.hub.errors import HubUnreachable
from pythia_tl.hub.listing import list_branches
from pythia_tl.hub.revision import cached_commit
from pythia_tl.source.names import ModelName
from pythia_tl.source.schedule import (
    CheckpointList,
    TrainingCheckpoint,
    from_branches,
    from_schedule,
)


@dataclass(frozen=True)
class BatchRequest:
    """Everything ``pythia-tl batch`` was asked to do.

    ``options`` are the conversion options of every revision (``overwrite`` and ``hash_output`` are
    set per revision by the runner).
    """

    models: tuple[ModelName, ...]
    steps: StepSpec
    output_dir: Path
    options: ConvertOptions = field(default_factory=ConvertOptions)
    jobs: int = 1
    shard: Shard | None = None
    keep_downloads: bool = False
    fail_fast: bool = False
    cache_dir: Path | None = None
    # Hash every existing output again, rather than trust the summary's record of it.
    recheck: bool = False

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UsageError(Param("jobs"), f" {self.jobs}: expected at least 1")
        if not self.models:
            raise UsageError(Param("models"), ": name at least one model")


@dataclass(frozen=True)
class WorkList:
    """This shard's items, and what the Hub said of each repository's branches."""

    items: tuple[WorkItem, ...]
    work_list_size: int
    # repo id -> {branch: commit}; None when the Hub could not be asked.
    branches: dict[str, dict[str, str] | None]
    # repo id -> why the Hub could not be asked.
    unreachable: dict[str, str]

    def branch_commit(self, item: WorkItem, cache_dir: Path | None) -> str | None:
        """The commit ``item``'s branch points to: as listed, or (the Hub not asked) as cached."""
        branches = self.branches.get(item.repo_id)
        if branches is not None:
            return branches.get(item.revision)
        return cached_commit(item.repo_id, item.revision, cache_dir)


def list_work(request: BatchRequest) -> WorkList:
    """Build the sorted (model, checkpoint) work list and take this shard's part of it.

    Steps of Pythia repositories are checked against the known schedule first, with no network;
    then each repository's branches are listed (one API call each), which gives every branch's
    commit for the resume check. A repository outside the Pythia suite takes its schedule from
    those branches: ``step<N>`` ones, and ones named by a token count (such as
    ``240b_tokens``), which ``all`` selects.
    """
    models = list(dict.fromkeys(request.models))
    check_distinct_folders(models)
    selected: dict[str, list[TrainingCheckpoint]] = {}
    for model in models:
        if model.has_known_schedule:
            selected[model.repo_id] = select_checkpoints(request.steps, from_schedule(model))
    branches: dict[str, dict[str, str] | None] = {}
    unreachable: dict[str, str] = {}
    for model in models:
        try:
            branches[model.repo_id] = list_branches(model.repo_id)
        except HubUnreachable as exc:
            branches[model.repo_id] = None
            unreachable[model.repo_id] = exc.why
        if model.repo_id in selected:
            continue
        found = branches[model.repo_id]
        if found is None:
            raise SourceError(
                f"{model.repo_id}: {unreachable[model.repo_id]}, and the checkpoints of a "
                "repository outside EleutherAI's Pythia suite are known only from its branches"
            )
        selected[model.repo_id] = select_checkpoints(request.steps, from_branches(model, found))
    items = sorted_items(selected)
    mine = request.shard.take(items) if request.shard is not None else items
    return WorkList(tuple(mine), len(items), branches, unreachable)


def select_checkpoints(steps: StepSpec, schedule: CheckpointList) -> list[TrainingCheckpoint]:
    """The checkpoints of ``schedule`` that ``steps`` asks for, in training order: ``all`` is
    every one (branches named by tokens too); step numbers and ranges select step branches, and
    on a repository whose branches are all named by tokens they are refused, naming some."""
    if steps.is_all:
        return list(schedule.checkpoints)
    if not schedule.steps:
        tokens = schedule.revisions
        shown = ", ".join(tokens[:3]) + (", ..." if len(tokens) > 3 else "")
        raise UsageError(
            Param("steps"),
            f" {steps}: the {len(tokens)} checkpoint branches of {schedule.model.repo_id} are "
            f"named by tokens ({shown}), not steps; select them with ",
            Param("steps", "all"),
        )
    chosen = set(steps.select(schedule.steps, schedule.model.name))
    return [c for c in schedule.checkpoints if c.step in chosen]
