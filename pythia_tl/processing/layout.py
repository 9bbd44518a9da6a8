"""Which output tensors each processing step changes, drops and needs, planned from keys alone.

Processing works on three parts of the model, each small enough to hold at once: the embedding,
one block at a time, and the head (``ln_final`` and the unembedding). Every step changes tensors
inside one part only, so processing part by part, in plan order, gives the same result as
TransformerLens processing the whole state dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pythia_tl.errors import PlanError
from pythia_tl.plan import Plan, PlannedTensor
from pythia_tl.processing.choice import FLAGS, Processing, ProcessingStep

Part = Literal["embed", "block", "head"]
StepTable = Mapping[ProcessingStep, Mapping[Part, tuple[str, ...]]]

# Tensor names within their part: a block's keys without their ``blocks.{l}.`` prefix.
CHANGES: StepTable = {
    "fold_ln": {
        "block": (
            "attn.W_Q",
            "attn.W_K",
            "attn.W_V",
            "attn.b_Q",
            "attn.b_K",
            "attn.b_V",
            "mlp.W_in",
            "mlp.b_in",
        ),
        "head": ("unembed.W_U", "unembed.b_U"),
    },
    "center_writing_weights": {
        "embed": ("embed.W_E",),
        "block": ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"),
    },
    "center_unembed": {"head": ("unembed.W_U", "unembed.b_U")},
    "fold_value_biases": {"block": ("attn.b_V", "attn.b_O")},
}

DROPS: StepTable = {
    "fold_ln": {
        "block": ("ln1.w", "ln1.b", "ln2.w", "ln2.b"),
        "head": ("ln_final.w", "ln_final.b"),
    },
}

# Needed beyond what a step changes or drops. Centring what writes to the residual stream leaves
# the model unchanged only because every reader of the stream is a LayerNorm, which removes the
# mean (folded or not: LNPre still does).
NEEDS: StepTable = {
    "center_writing_weights": {"block": ("ln1.w", "ln2.w"), "head": ("ln_final.w",)},
    "fold_value_biases": {"block": ("attn.W_O",)},
}

_WHY: dict[ProcessingStep, str] = {
    "fold_ln": "folding LayerNorm needs every LayerNorm and the weights that read it",
    "center_writing_weights": (
        "centring the writing weights is exact only when LayerNorm reads the residual stream"
    ),
    "center_unembed": "centring the unembedding needs W_U and b_U",
    "fold_value_biases": "folding value biases needs b_V, W_O and b_O",
}

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class Group:
    """One part of the model: the tensors the conversion yields for it, and what is written."""

    part: Part
    prefix: str
    inputs: tuple[PlannedTensor, ...]
    steps: tuple[ProcessingStep, ...]
    outputs: tuple[PlannedTensor, ...]

    def local(self, key: str) -> str:
        return key.removeprefix(self.prefix)


@dataclass(frozen=True)
class ProcessingPlan:
    """A conversion plan with processing applied: the written tensors, in the order written."""

    processing: Processing
    groups: tuple[Group, ...]

    @property
    def tensors(self) -> tuple[PlannedTensor, ...]:
        return tuple(t for group in self.groups for t in group.outputs)

    @property
    def dropped(self) -> tuple[str, ...]:
        """Planned keys that processing leaves out of the output (the folded LayerNorms)."""
        kept = {t.key for t in self.tensors}
        return tuple(t.key for group in self.groups for t in group.inputs if t.key not in kept)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def steps_for(self, key: str) -> tuple[ProcessingStep, ...]:
        """The chosen steps that change the output tensor ``key``."""
        part, prefix = part_of(key)
        name = key.removeprefix(prefix)
        return tuple(step for step in self.processing.steps if name in CHANGES[step].get(part, ()))


def part_of(key: str) -> tuple[Part, str]:
    """The part an output key belongs to, and the prefix its name within the part drops."""
    block = _BLOCK_KEY.match(key)
    if block is not None:
        return "block", block.group(0)
    if key.startswith("embed."):
        return "embed", ""
    if key.startswith(("ln_final.", "unembed.")):
        return "head", ""
    raise PlanError(f"processing: output key {key} belongs to no known part of the model")


def plan_processing(plan: Plan, processing: Processing) -> ProcessingPlan:
    """Group ``plan``'s tensors by part and work out what each chosen step does to them.

    Raises PlanError, naming the flag, when a chosen step lacks a tensor it needs.
    """
    steps = processing.steps
    runs = _consecutive_parts(plan.tensors)
    present = {part for _, part, _ in runs}
    for step in steps:
        for part in CHANGES[step]:
            if part not in present:
                raise PlanError(
                    f"{FLAGS[step]}: the conversion has no {part} tensors; {_WHY[step]}"
                )
    groups = []
    seen: set[tuple[str, Part]] = set()
    for prefix, part, inputs in runs:
        if (prefix, part) in seen:
            raise PlanError(f"processing: the tensors of {prefix or part} are not consecutive")
        seen.add((prefix, part))
        names = {t.key.removeprefix(prefix) for t in inputs}
        for step in steps:
            for table in (CHANGES, DROPS, NEEDS):
                for name in table.get(step, {}).get(part, ()):
                    if name not in names:
                        raise PlanError(
                            f"{FLAGS[step]}: the conversion has no {prefix}{name}; {_WHY[step]}"
                        )
        dropped = {n for step in steps for n in DROPS.get(step, {}).get(part, ())}
        groups.append(
            Group(
                part=part,
                prefix=prefix,
                inputs=inputs,
                steps=tuple(s for s in steps if CHANGES[s].get(part)),
                outputs=tuple(t for t in inputs if t.key.removeprefix(prefix) not in dropped),
            )
        )
    return ProcessingPlan(processing, tuple(groups))


def _consecutive_parts(
    tensors: tuple[PlannedTensor, ...],
) -> list[tuple[str, Part, tuple[PlannedTensor, ...]]]:
    runs: list[tuple[str, Part, list[PlannedTensor]]] = []
    for planned in tensors:
        part, prefix = part_of(planned.key)
        if runs and runs[-1][:2] == (prefix, part):
            runs[-1][2].append(planned)
        else:
            runs.append((prefix, part, [planned]))
    return [(prefix, part, tuple(run)) for prefix, part, run in runs]
