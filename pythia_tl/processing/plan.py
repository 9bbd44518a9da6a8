"""The processing plan: which output tensors each pass changes, drops and needs, from keys alone.

Processing works on three parts of the model, each small enough to hold at once: the embedding,
one block at a time, and the head (``ln_final`` and the unembedding). Every pass changes tensors
inside one part only, so processing part by part, in plan order, gives the same result as
TransformerLens processing the whole state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pythia_tl.errors import Param, PlanError
from pythia_tl.mapping.plan import ConversionPlan, PlannedTensor
from pythia_tl.mapping.selection import BLOCK_KEY
from pythia_tl.processing.passes import Processing, ProcessingPass

Part = Literal["embed", "block", "head"]
PassTable = Mapping[ProcessingPass, Mapping[Part, tuple[str, ...]]]

# Tensor names within their part: a block's keys without their ``blocks.{l}.`` prefix.
CHANGES: PassTable = {
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

DROPS: PassTable = {
    "fold_ln": {
        "block": ("ln1.w", "ln1.b", "ln2.w", "ln2.b"),
        "head": ("ln_final.w", "ln_final.b"),
    },
}

# Needed beyond what a pass changes or drops. Centring what writes to the residual stream leaves
# the model unchanged only because every reader of the stream is a LayerNorm, which removes the
# mean (folded or not: LNPre still does).
NEEDS: PassTable = {
    "center_writing_weights": {"block": ("ln1.w", "ln2.w"), "head": ("ln_final.w",)},
    "fold_value_biases": {"block": ("attn.W_O",)},
}

_WHY: dict[ProcessingPass, str] = {
    "fold_ln": "folding LayerNorm needs every LayerNorm and the weights that read it",
    "center_writing_weights": (
        "centring the writing weights is exact only when LayerNorm reads the residual stream"
    ),
    "center_unembed": "centring the unembedding needs W_U and b_U",
    "fold_value_biases": "folding value biases needs b_V, W_O and b_O",
}


@dataclass(frozen=True)
class Group:
    """One part of the model: the tensors the conversion yields for it, and what is written."""

    part: Part
    prefix: str
    inputs: tuple[PlannedTensor, ...]
    passes: tuple[ProcessingPass, ...]
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

    def passes_for(self, key: str) -> tuple[ProcessingPass, ...]:
        """The chosen passes that change the output tensor ``key``."""
        part, prefix = part_of(key)
        name = key.removeprefix(prefix)
        return tuple(p for p in self.processing.passes if name in CHANGES[p].get(part, ()))


def part_of(key: str) -> tuple[Part, str]:
    """The part an output key belongs to, and the prefix its name within the part drops."""
    block = BLOCK_KEY.match(key)
    if block is not None:
        return "block", block.group(0)
    if key.startswith("embed."):
        return "embed", ""
    if key.startswith(("ln_final.", "unembed.")):
        return "head", ""
    raise PlanError(f"processing: output key {key} belongs to no known part of the model")


def plan_processing(
    plan: ConversionPlan, processing: Processing, *, partial: bool = False
) -> ProcessingPlan:
    """Group ``plan``'s tensors by part and work out what each chosen pass does to them.

    Raises PlanError, naming the pass, when a chosen pass lacks a tensor it needs. ``partial``:
    the plan holds some parts only (a selection); those it holds must be complete.
    """
    passes = processing.passes
    runs = _consecutive_parts(plan.tensors)
    present = {part for _, part, _ in runs}
    for name in passes:
        for part in CHANGES[name]:
            if part not in present and not partial:
                raise PlanError(
                    Param(name), f": the conversion has no {part} tensors; {_WHY[name]}"
                )
    groups = []
    seen: set[tuple[str, Part]] = set()
    for prefix, part, inputs in runs:
        if (prefix, part) in seen:
            raise PlanError(f"processing: the tensors of {prefix or part} are not consecutive")
        seen.add((prefix, part))
        names = {t.key.removeprefix(prefix) for t in inputs}
        chosen = [name for name in passes if CHANGES[name].get(part)] if partial else passes
        for name in chosen:
            for table in (CHANGES, DROPS, NEEDS):
                for needed in table.get(name, {}).get(part, ()):
                    if needed not in names:
                        raise PlanError(
                            Param(name),
                            f": the conversion has no {prefix}{needed}; {_WHY[name]}",
                        )
        dropped = {n for p in passes for n in DROPS.get(p, {}).get(part, ())}
        groups.append(
            Group(
                part=part,
                prefix=prefix,
                inputs=inputs,
                passes=tuple(p for p in passes if CHANGES[p].get(part)),
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
