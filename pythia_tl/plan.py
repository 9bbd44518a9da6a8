"""Planning a conversion from headers alone: every output key, its source, steps, shape and dtype.

The plan is where the checkpoint is checked against the table: a missing tensor, an unexpected
one, or one whose shape disagrees with config.json is reported here, by name, before any tensor
data is read or any output file is created.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pythia_tl.converters.pythia import IGNORED_SOURCE_KEYS, PYTHIA_TO_TL
from pythia_tl.converters.rules import Rule, eval_shape, expand
from pythia_tl.converters.steps import Shape, Step, StepError, chain_shape
from pythia_tl.errors import CheckpointError, PlanError, UsageError
from pythia_tl.source.checkpoint import Checkpoint
from pythia_tl.source.config import NeoXConfig

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
FLOAT_DTYPES = frozenset(DTYPES.values())


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where it comes from and what it will be."""

    key: str
    source: str | None
    steps: tuple[Step, ...]
    source_shape: Shape
    shape: Shape
    source_dtype: torch.dtype | None
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n * self.dtype.itemsize


@dataclass(frozen=True)
class Plan:
    config: NeoXConfig
    tensors: tuple[PlannedTensor, ...]
    dtype: torch.dtype
    ignored: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_plan(
    checkpoint: Checkpoint, dtype: str = "auto", table: Sequence[Rule] = PYTHIA_TO_TL
) -> Plan:
    """Check ``checkpoint`` against ``table`` and plan every output tensor."""
    config = checkpoint.config
    dims = config.dims()
    rules = expand(table, config.n_layers, dims)
    available = {name: info for name, info in checkpoint.tensors.items()}
    ignored = tuple(sorted(n for n in available if IGNORED_SOURCE_KEYS.fullmatch(n)))
    used: set[str] = set()
    planned_sources: dict[str, str] = {}
    for rule in rules:
        if rule.source is None:
            continue
        name = next((n for n in rule.source_names if n in available), None)
        if name is None:
            spelled = " or ".join(rule.source_names)
            raise CheckpointError(f"{_where(checkpoint)}: missing tensor {spelled}")
        planned_sources[rule.source] = name
        used.add(name)
    unexpected = sorted(set(available) - used - set(ignored))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"{available[unexpected[0]].file}: unexpected tensor {unexpected[0]}{more}; "
            "not part of a GPT-NeoX checkpoint"
        )
    source_dtype = _source_float_dtype(checkpoint, used)
    out_dtype = _output_dtype(dtype, source_dtype)
    planned = []
    for rule in rules:
        info = available[planned_sources[rule.source]] if rule.source is not None else None
        expected_source = eval_shape(rule.source_shape, dims)
        if info is not None and info.shape != expected_source:
            raise CheckpointError(
                f"{info.file}: {info.name} has shape {list(info.shape)}, but config.json implies "
                f"{list(expected_source)} ({', '.join(rule.source_shape)})"
            )
        try:
            shape = chain_shape(rule.steps, expected_source)
        except StepError as exc:
            raise PlanError(f"rule for {rule.target}: {exc}") from None
        if shape != eval_shape(rule.target_shape, dims):
            raise PlanError(
                f"rule for {rule.target}: steps give shape {list(shape)}, table says "
                f"{list(eval_shape(rule.target_shape, dims))}"
            )
        planned.append(
            PlannedTensor(
                key=rule.target,
                source=info.name if info is not None else None,
                steps=rule.steps,
                source_shape=expected_source,
                shape=shape,
                source_dtype=info.dtype if info is not None else None,
                dtype=out_dtype,
            )
        )
    return Plan(config, tuple(planned), out_dtype, ignored)


def _where(checkpoint: Checkpoint) -> str:
    if len(checkpoint.files) == 1:
        return str(checkpoint.files[0])
    return f"{checkpoint.folder} ({len(checkpoint.files)} shards)"


def _source_float_dtype(checkpoint: Checkpoint, used: set[str]) -> torch.dtype:
    dtypes = {checkpoint.tensors[name].dtype for name in used}
    for name in sorted(used):
        info = checkpoint.tensors[name]
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{info.file}: {name} has dtype {dtype_name(info.dtype)}, expected a float dtype"
            )
    if len(dtypes) > 1:
        # Mixed sources (rare): 'auto' keeps the widest so no tensor loses precision.
        return max(dtypes, key=lambda d: (d.itemsize, d == torch.float32))
    return dtypes.pop()


def check_dtype_option(requested: str) -> None:
    """Refuse an unknown ``--dtype`` before any work starts."""
    if requested != "auto" and requested not in DTYPES:
        raise UsageError(f"--dtype {requested!r}: expected auto, {', '.join(DTYPES)}")


def _output_dtype(requested: str, source: torch.dtype) -> torch.dtype:
    check_dtype_option(requested)
    return source if requested == "auto" else DTYPES[requested]
