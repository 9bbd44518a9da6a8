"""Pythia model names and the training-step schedule of their checkpoints."""

from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass

from pythia_tl.errors import Param, UsageError
from pythia_tl.hub.refs import checked_repo_id

ORGANISATION = "EleutherAI"
SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
OLD_SIZES = {
    "19m": "70m",
    "125m": "160m",
    "350m": "410m",
    "800m": "1b",
    "1.3b": "1.4b",
    "2.7b": "2.8b",
    "6.7b": "6.9b",
    "13b": "12b",
}
TOKENS_PER_STEP = 2_097_152
LAST_STEP = 143_000

_SHORT_NAME = re.compile(
    r"pythia-(?P<size>[0-9.]+[mb])(?P<deduped>-deduped)?(?P<v0>-v0)?"
    r"(?P<seed>-(?:data-|weight-)?seed\d{1,3})?"
)
# PolyPythias (EleutherAI/pythia #141, #202, #203): seed runs of the smaller sizes, 154 step
# branches each like the main suite; pythia-160m also has runs that vary only the data order or
# only the initial weights.
POLYPYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m")
POLYPYTHIA_SEEDS = range(1, 10)
POLYPYTHIA_PARTIAL_SEEDS = range(1, 4)


@dataclass(frozen=True)
class ModelName:
    """A Pythia repository on the Hub, e.g. ``EleutherAI/pythia-410m-deduped``."""

    repo_id: str

    @property
    def name(self) -> str:
        """The repository name without its organisation."""
        return self.repo_id.rsplit("/", 1)[-1]

    @property
    def is_v0(self) -> bool:
        return "-v0" in self.name

    @property
    def has_known_schedule(self) -> bool:
        """Whether this is an EleutherAI Pythia repository, whose checkpoint steps are known."""
        return self.repo_id.startswith(f"{ORGANISATION}/pythia-")

    def steps(self) -> list[int]:
        """The training steps that have a ``step<N>`` branch."""
        return training_steps(v0=self.is_v0)


def training_steps(v0: bool = False) -> list[int]:
    """The checkpoint schedule: 0, 1, 2, 4, ..., 512, then every 1000 to 143000.

    ``-v0`` models have no checkpoints before step 1000.
    """
    early = [] if v0 else [0] + [2**i for i in range(10)]
    return early + list(range(1000, LAST_STEP + 1, 1000))


def tokens_seen(step: int) -> int:
    """The number of training tokens a checkpoint at ``step`` has seen."""
    return step * TOKENS_PER_STEP


def resolve_model_name(name: str) -> ModelName:
    """Map ``pythia-70m``, an old name such as ``pythia-19m``, or ``Org/repo`` to a repository.

    Anything with a slash is taken as a repository id as it is.
    """
    if "/" in name:
        return ModelName(checked_repo_id(name))
    match = _SHORT_NAME.fullmatch(name)
    if match is None:
        raise UsageError(
            f"unknown model name {name!r}{_did_you_mean(name)}: expected a folder, a Hub repo id "
            "such as 'EleutherAI/pythia-70m', or a short name such as 'pythia-70m' or "
            "'pythia-410m-deduped'"
        )
    size = OLD_SIZES.get(match["size"], match["size"])
    if size not in SIZES:
        known = ", ".join(SIZES)
        raise UsageError(
            f"unknown model name {name!r}{_did_you_mean(name)}: Pythia comes in sizes {known}"
        )
    seed = match["seed"] or ""
    if seed and (seed not in _seed_suffixes(size) or match["deduped"] or match["v0"]):
        raise UsageError(
            f"unknown model name {name!r}{_did_you_mean(name)}: PolyPythias seed runs are "
            f"pythia-{{{','.join(POLYPYTHIA_SIZES)}}}-seed1..9 and "
            "pythia-160m-data-seed1..3, pythia-160m-weight-seed1..3"
        )
    suffix = (match["deduped"] or "") + (match["v0"] or "") + seed
    return ModelName(f"{ORGANISATION}/pythia-{size}{suffix}")


def _seed_suffixes(size: str) -> set[str]:
    if size not in POLYPYTHIA_SIZES:
        return set()
    suffixes = {f"-seed{n}" for n in POLYPYTHIA_SEEDS}
    if size == "160m":
        suffixes |= {
            f"-{kind}-seed{n}" for kind in ("data", "weight") for n in POLYPYTHIA_PARTIAL_SEEDS
        }
    return suffixes


def step_revision(step: int, model: ModelName | None) -> str:
    """The branch of a training step, checked against the model's schedule when it is known."""
    if model is not None and model.has_known_schedule:
        schedule = model.steps()
        if step not in schedule:
            raise UsageError(
                Param("step"),
                f" {step}: {model.name} has no checkpoint at that step (nearest: "
                f"{' and '.join(map(str, nearest_steps(step, schedule)))}); steps are "
                f"{_describe(schedule)}",
            )
    elif step < 0:
        raise UsageError(Param("step"), f" {step}: expected a non-negative step number")
    return f"step{step}"


def known_short_names() -> list[str]:
    """Every short name of the suite's main models (sizes x deduped x v0) and of PolyPythias."""
    main = [
        f"pythia-{size}{deduped}{v0}"
        for size in SIZES
        for deduped in ("", "-deduped")
        for v0 in ("", "-v0")
    ]
    seeds = [
        f"pythia-{size}{suffix}"
        for size in POLYPYTHIA_SIZES
        for suffix in sorted(_seed_suffixes(size))
    ]
    return main + seeds


def nearest_steps(step: int, schedule: list[int]) -> list[int]:
    """The schedule's steps just below and just above ``step`` (one at either end)."""
    at = bisect.bisect_left(schedule, step)
    return [schedule[i] for i in (at - 1, at) if 0 <= i < len(schedule)]


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), known_short_names(), n=3, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _describe(schedule: list[int]) -> str:
    if schedule[0] == 0:
        return "0, 1, 2, 4, ..., 512 and every 1000 from 1000 to 143000"
    return "every 1000 from 1000 to 143000"
