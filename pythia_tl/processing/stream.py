"""Processing the stream of converted tensors, one part of the model at a time.

The conversion yields ``(planned, tensor)`` in plan order (from a folder) or in the order the
files store them (from the Hub). A part that a chosen pass changes is gathered (the embedding,
one block, or the head), processed in float32 and handed on without its folded LayerNorms; any
other part passes straight through. A block is processed as a float32 copy; the embedding and
unembedding weights are processed in place, a chunk of the vocabulary at a time
(``arithmetic.CHUNKED``). Memory therefore stays at about one block in float32 plus the largest
single tensor (the embedding or the unembedding) as converted, plus one chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from pythia_tl.engine.pipeline import Converted
from pythia_tl.errors import PlanError
from pythia_tl.mapping.plan import PlannedTensor
from pythia_tl.processing.arithmetic import CHUNKED, process_part
from pythia_tl.processing.plan import Group, ProcessingPlan


def process_stream(plan: ProcessingPlan, converted: Iterable[Converted]) -> Iterator[Converted]:
    """``converted`` processed as ``plan`` says.

    The tensors may come in any order: a part is processed and handed on as soon as all of its
    tensors are in (in plan order, that is one part at a time). Processed tensors are float32
    (the output dtype is applied afterwards), except the embedding and unembedding weights when
    they come in the output dtype: their float32 results are written over them, so
    ``converted`` must own its tensors (as the pipeline's do). Passed-through tensors are
    yielded as they came.
    """
    if not plan.processing.passes:
        # Raw weights: the conversion's own stream, whatever its order.
        yield from converted
        return
    group_of = {planned.key: group for group in plan.groups for planned in group.inputs}
    gathered: dict[str, dict[str, torch.Tensor]] = {}
    for planned, tensor in converted:
        group = group_of.pop(planned.key, None)
        if group is None:
            raise PlanError(f"processing: {planned.key} was converted but not planned (or twice)")
        if not group.passes:
            yield planned, tensor
            continue
        tensors = gathered.setdefault(group.prefix or group.part, {})
        tensors[group.local(planned.key)] = _own_copy(planned, group, tensor)
        del tensor
        if len(tensors) == len(group.inputs):
            del gathered[group.prefix or group.part]
            process_part(group.part, tensors, group.passes)
            yield from _emit(group, tensors)
    if group_of:
        missing = next(iter(group_of))
        raise PlanError(f"processing: {missing} was planned but not converted")


def _own_copy(planned: PlannedTensor, group: Group, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor the passes may change in place.

    A converted tensor may share storage with others: a float32 copy of our own even when
    already float32, except for the chunked weights, used as they are unless they could share
    it. Their results are rounded to the dtype they come in, so only when that is the output's
    (or float32, which the output's cast then rounds once): a bfloat16 source for a float16
    output is processed as a float32 copy, like a block.
    """
    if group.local(planned.key) in CHUNKED and tensor.dtype in (planned.dtype.torch, torch.float32):
        if _sole_user(tensor):
            return tensor
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor.to(torch.float32, copy=True)


def _sole_user(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers all of its memory (not a slice of a larger copy)."""
    return tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes


def _emit(group: Group, tensors: dict[str, torch.Tensor]) -> Iterator[Converted]:
    for planned in group.outputs:
        yield planned, tensors.pop(group.local(planned.key))
