"""What a conversion writes, and what it must read for it: the conversion plan, the processing
plan and the selection together.

Without a selection every tensor is read and written. With one, the selected keys are written,
and read are the sources of those keys plus, for a part of the model that processing changes,
every tensor of that part (processing a block needs its LayerNorms, ``W_O``, ...): the rest of
the checkpoint is never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pythia_tl.mapping.plan import ConversionPlan, PlannedTensor
from pythia_tl.mapping.selection import EVERY_TENSOR, Selection
from pythia_tl.processing import Processing, ProcessingPlan, plan_processing

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class OutputPlan:
    """``conversion``: the sources read and what they yield; ``processing``: what processing
    does with them; ``tensors``: what is written, in the order written."""

    conversion: ConversionPlan
    processing: ProcessingPlan
    selection: Selection
    tensors: tuple[PlannedTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def is_partial(self) -> bool:
        return not self.selection.is_all

    def written(
        self, stream: Iterable[tuple[PlannedTensor, torch.Tensor]]
    ) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
        """The stream's tensors that are written (the others were read only for processing)."""
        keys = {t.key for t in self.tensors}
        return ((planned, tensor) for planned, tensor in stream if planned.key in keys)


def plan_output(
    plan: ConversionPlan, processing: Processing, selection: Selection = EVERY_TENSOR
) -> OutputPlan:
    """Apply ``processing`` and ``selection`` to a full conversion plan."""
    full = plan_processing(plan, processing)
    if selection.is_all:
        return OutputPlan(plan, full, selection, full.tensors)
    keys = set(selection.keys([t.key for t in full.tensors]))
    needed = set(keys)
    for group in full.groups:
        if group.passes and any(t.key in keys for t in group.outputs):
            needed.update(t.key for t in group.inputs)
    conversion = plan.restricted(needed)
    processed = plan_processing(conversion, processing, partial=True)
    return OutputPlan(
        conversion, processed, selection, tuple(t for t in processed.tensors if t.key in keys)
    )
