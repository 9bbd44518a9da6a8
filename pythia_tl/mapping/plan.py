"""Planning a conversion from headers alone: every source tensor read, and what it yields.

The plan is where a checkpoint is checked against the table: a missing tensor, an unexpected one,
or one whose shape disagrees with config.json is reported here, by name, before any tensor data
is read or any output file is created.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pythia_tl.dtypes import (
    BY_NAME,
    FLOAT32,
    OUTPUT_DTYPE_NAMES,
    OUTPUT_DTYPES,
    DType,
    tensor_bytes,
)
from pythia_tl.errors import CheckpointError, Param, PlanError, UsageError
from pythia_tl.mapping.pythia import IGNORED_SOURCE_KEYS, PYTHIA_TO_TL
from pythia_tl.mapping.rules import Rule, RuleError, Shape, expand
from pythia_tl.source.checkpoint import Checkpoint
from pythia_tl.source.config import NeoXConfig

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: what it will be, and the source tensor it comes from."""

    key: str
    shape: Shape
    dtype: DType
    source: str | None
    source_shape: Shape
    source_dtype: DType | None
    # How the source becomes this tensor, in words (empty: as it is).
    ops: tuple[str, ...]
    # Which of its rule's outputs this is.
    index: int = 0

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.dtype, self.shape)


@dataclass(frozen=True)
class PlannedSource:
    """One rule of the table, concrete: the source tensor read once and the outputs it yields."""

    rule: Rule
    dims: tuple[tuple[str, int], ...]
    outputs: tuple[PlannedTensor, ...]

    @property
    def name(self) -> str | None:
        """The source tensor's name as the checkpoint stores it (None: made from nothing)."""
        return self.outputs[0].source

    def convert(self, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The planned outputs of the source ``tensor``, views of it where the pattern allows."""
        every = self.rule.apply(tensor, dict(self.dims))
        return tuple(every[planned.index] for planned in self.outputs)

    def made(self) -> torch.Tensor:
        """The output of a rule that reads no source."""
        return self.rule.zeros(dict(self.dims), self.outputs[0].dtype.torch)


@dataclass(frozen=True)
class ConversionPlan:
    config: NeoXConfig
    sources: tuple[PlannedSource, ...]
    dtype: DType
    ignored: tuple[str, ...]

    @property
    def tensors(self) -> tuple[PlannedTensor, ...]:
        """Every output tensor, in the order written."""
        return tuple(t for source in self.sources for t in source.outputs)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def restricted(self, keys: Collection[str]) -> ConversionPlan:
        """This plan with only the outputs ``keys`` (a source none of whose outputs is kept is
        not read)."""
        sources = (
            replace(source, outputs=tuple(t for t in source.outputs if t.key in keys))
            for source in self.sources
        )
        return replace(self, sources=tuple(source for source in sources if source.outputs))


def check_dtype(requested: str) -> None:
    """Refuse an unknown output dtype before any work starts."""
    if requested != "auto" and requested not in OUTPUT_DTYPE_NAMES:
        raise UsageError(
            Param("dtype"), f" {requested!r}: expected auto, {', '.join(OUTPUT_DTYPE_NAMES)}"
        )


def plan_conversion(
    checkpoint: Checkpoint, dtype: str = "auto", table: Sequence[Rule] = PYTHIA_TO_TL
) -> ConversionPlan:
    """Check ``checkpoint`` against ``table`` and plan every output tensor."""
    check_dtype(dtype)
    config = checkpoint.config
    rules = expand(table, config.n_layers)
    available = checkpoint.tensors
    ignored = tuple(sorted(n for n in available if IGNORED_SOURCE_KEYS.fullmatch(n)))
    stored: dict[int, str] = {}
    for position, rule in enumerate(rules):
        if rule.source is None:
            continue
        name = next((n for n in rule.source_names if n in available), None)
        if name is None:
            spelled = " or ".join(rule.source_names)
            raise CheckpointError(f"{_where(checkpoint)}: missing tensor {spelled}")
        stored[position] = name
    unexpected = sorted(set(available) - set(stored.values()) - set(ignored))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"{available[unexpected[0]].file}: unexpected tensor {unexpected[0]}{more}; "
            "not part of a GPT-NeoX checkpoint"
        )
    out_dtype = _output_dtype(dtype, _source_float_dtype(checkpoint, sorted(stored.values())))
    dims = config.dims()
    planned = []
    for position, rule in enumerate(rules):
        name = stored.get(position)
        if name is not None:
            info = available[name]
            expected = _source_shape(rule, dims)
            if info.shape != expected:
                raise CheckpointError(
                    f"{info.file}: {info.name} has shape {list(info.shape)}, but config.json "
                    f"implies {list(expected)} ({rule.source_axes})"
                )
        planned.append(
            _planned(rule, dims, out_dtype, name, available[name].dtype if name else None)
        )
    return ConversionPlan(config, tuple(planned), out_dtype, ignored)


def expected_plan(
    config: NeoXConfig, dtype: DType, table: Sequence[Rule] = PYTHIA_TO_TL
) -> ConversionPlan:
    """The plan ``config`` implies for any checkpoint with canonical names (no file needed)."""
    dims = config.dims()
    sources = tuple(
        _planned(rule, dims, dtype, rule.source, None) for rule in expand(table, config.n_layers)
    )
    return ConversionPlan(config, sources, dtype, ())


def _planned(
    rule: Rule,
    dims: dict[str, int],
    dtype: DType,
    name: str | None,
    source_dtype: DType | None,
) -> PlannedSource:
    try:
        shape, source_shape = rule.output_shape(dims), rule.source_shape(dims)
    except RuleError as exc:
        raise PlanError(f"rule for {', '.join(rule.outputs)}: {exc}") from None
    ops = () if rule.is_identity or rule.source is None else (f"rearrange('{rule.pattern}')",)
    if rule.source is None:
        ops = (f"zeros({', '.join(rule.output_axes)})",)
    many = len(rule.outputs) > 1
    outputs = tuple(
        PlannedTensor(
            key=key,
            shape=shape,
            dtype=dtype,
            source=name,
            source_shape=source_shape,
            source_dtype=source_dtype,
            ops=ops + ((f"part {index} of {len(rule.outputs)}",) if many else ()),
            index=index,
        )
        for index, key in enumerate(rule.outputs)
    )
    return PlannedSource(rule, tuple(sorted(rule.sizes(dims).items())), outputs)


def _source_shape(rule: Rule, dims: dict[str, int]) -> Shape:
    try:
        return rule.source_shape(dims)
    except RuleError as exc:
        raise PlanError(f"rule for {', '.join(rule.outputs)}: {exc}") from None


def _where(checkpoint: Checkpoint) -> str:
    if len(checkpoint.files) == 1:
        return str(checkpoint.files[0])
    return f"{checkpoint.folder} ({len(checkpoint.files)} shards)"


def _source_float_dtype(checkpoint: Checkpoint, used: list[str]) -> DType:
    for name in used:
        info = checkpoint.tensors[name]
        if info.dtype not in OUTPUT_DTYPES:
            raise CheckpointError(
                f"{info.file}: {name} has dtype {info.dtype}, expected a float dtype"
            )
    dtypes = {checkpoint.tensors[name].dtype for name in used}
    # Mixed sources (rare): float32 holds every float16 and bfloat16 value exactly.
    return dtypes.pop() if len(dtypes) == 1 else FLOAT32


def _output_dtype(requested: str, source: DType) -> DType:
    return source if requested == "auto" else BY_NAME[requested]
