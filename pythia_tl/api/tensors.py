"""``pythia_tl.tensors``: some TransformerLens keys of a model, step after step, in memory.

Each step is one conversion of its revision limited to the keys asked for (``--tensors``'s
selection), through the engine's reading path: a revision in huggingface_hub's cache is read
from there; otherwise only the byte ranges of the source tensors those keys need are fetched,
and nothing is stored. Memory: one step's selected tensors (the stacked form holds them all).
Per-head keys come out per head (``W_Q`` is ``[n_heads, d_model, d_head]``): nobody splits the
fused ``query_key_value`` by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pythia_tl.api.steps import hub_model_param, key_globs, step_spec
from pythia_tl.errors import Param, UsageError
from pythia_tl.mapping.selection import parse_selection
from pythia_tl.processing import Processing
from pythia_tl.source.schedule import checkpoint_schedule

if TYPE_CHECKING:
    import torch


class StepTensors(NamedTuple):
    """One step's tensors: ``for step, tensors in pythia_tl.tensors(...)``."""

    step: int
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True)
class StackedTensors:
    """Every step's tensors, each key stacked over the steps (axis 0, in ``steps`` order)."""

    model: str
    steps: tuple[int, ...]
    revisions: tuple[str, ...]
    commits: tuple[str, ...]
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Step:
    step: int
    revision: str
    commit: str
    tensors: dict[str, torch.Tensor]


def tensors(
    model: str,
    keys: str | Iterable[str],
    steps: str | Iterable[int] = "all",
    *,
    revision_per_step: Mapping[int, str] | None = None,
    layers: str | None = None,
    dtype: str = "auto",
    process: bool = False,
    allow_nonfinite: bool = False,
    cache_dir: str | Path | None = None,
) -> Iterator[StepTensors]:
    """The TransformerLens tensors ``keys`` (globs such as ``"blocks.*.attn.W_Q"``, a comma
    list or a list) of Hub model ``model``, at each of ``steps`` in step order.

    ``steps``: ``"all"``, a SPEC such as ``"0,1,1000-143000:10000"`` (as ``batch --steps``), or
    step numbers, taken from the model's schedule. ``revision_per_step``: the revision of each
    step, for repositories whose branches are not named ``step<N>`` (its steps are the default
    ``steps``). ``layers``, ``dtype``, ``process`` and ``allow_nonfinite`` are ``convert``'s. A
    step that cannot be read raises (the steps before it have been yielded).
    """
    for one in _steps(
        model, keys, steps, revision_per_step, layers, dtype, process, allow_nonfinite, cache_dir
    ):
        yield StepTensors(one.step, one.tensors)


def stacked_tensors(
    model: str,
    keys: str | Iterable[str],
    steps: str | Iterable[int] = "all",
    *,
    revision_per_step: Mapping[int, str] | None = None,
    layers: str | None = None,
    dtype: str = "auto",
    process: bool = False,
    allow_nonfinite: bool = False,
    cache_dir: str | Path | None = None,
) -> StackedTensors:
    """``tensors``, each key stacked over the steps: ``result.tensors["embed.W_E"][i]`` is the
    embedding at ``result.steps[i]``; ``result.commits[i]`` is the commit it was read at."""
    import torch

    found: list[int] = []
    revisions: list[str] = []
    commits: list[str] = []
    stacked: dict[str, torch.Tensor] = {}
    chosen = _chosen_steps(model, steps, revision_per_step)
    for i, one in enumerate(
        _steps(
            model,
            keys,
            chosen,
            revision_per_step,
            layers,
            dtype,
            process,
            allow_nonfinite,
            cache_dir,
        )
    ):
        if not stacked:
            stacked = {
                key: torch.empty((len(chosen), *t.shape), dtype=t.dtype)
                for key, t in one.tensors.items()
            }
        for key, tensor in one.tensors.items():
            stacked[key][i] = tensor
        found.append(one.step)
        revisions.append(one.revision)
        commits.append(one.commit)
    return StackedTensors(
        hub_model_param(model).repo_id, tuple(found), tuple(revisions), tuple(commits), stacked
    )


def _chosen_steps(
    model: str, steps: str | Iterable[int], revision_per_step: Mapping[int, str] | None
) -> list[int]:
    name = hub_model_param(model)
    if revision_per_step is not None:
        available = sorted(revision_per_step)
        if steps == "all":
            return available
        return step_spec(steps).select(available, name.name)
    return step_spec(steps).select(checkpoint_schedule(name).steps, name.name)


def _steps(
    model: str,
    keys: str | Iterable[str],
    steps: str | Iterable[int],
    revision_per_step: Mapping[int, str] | None,
    layers: str | None,
    dtype: str,
    process: bool,
    allow_nonfinite: bool,
    cache_dir: str | Path | None,
) -> Iterator[_Step]:
    from pythia_tl.api.in_memory import convert_in_memory
    from pythia_tl.engine.options import ConvertOptions
    from pythia_tl.mapping.plan import check_dtype
    from pythia_tl.source.resolve import resolve_source

    name = hub_model_param(model)
    globs = key_globs(keys)
    if not globs:
        raise UsageError(Param("keys"), ": name at least one TransformerLens key")
    check_dtype(dtype)
    options = ConvertOptions(
        dtype=dtype,
        processing=Processing.choose(process=process),
        selection=parse_selection(globs, layers),
        allow_nonfinite=allow_nonfinite,
    )
    cache = None if cache_dir is None else Path(cache_dir)
    for step in _chosen_steps(model, steps, revision_per_step):
        if revision_per_step is not None:
            source = resolve_source(
                name.repo_id, revision=revision_per_step[step], cache_dir=cache, tokenizer=False
            )
        else:
            source = resolve_source(name.repo_id, step=step, cache_dir=cache, tokenizer=False)
        converted = convert_in_memory(source, options)
        provenance = source.provenance
        yield _Step(step, provenance.revision or "", provenance.commit or "", converted)
