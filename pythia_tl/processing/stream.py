"""Processing the stream of converted tensors, one part of the model at a time.

The conversion yields ``(planned, tensor)`` in plan order. A part that a chosen pass changes is
gathered (the embedding, one block, or the head), processed in float32 and handed on without its
folded LayerNorms; any other part passes straight through. A block is processed as a float32
copy; the embedding and unembedding weights are processed in place, a chunk of the vocabulary
at a time (``arithmetic.CHUNKED``). Memory therefore stays at about one block in float32 plus
the largest single tensor (the embedding or the unembedding) as converted, plus one chunk.
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
    """``converted`` processed as ``plan`` says, yielded in the order of ``plan.tensors``.

    Processed tensors are float32 (the output dtype is applied afterwards), except the embedding
    and unembedding weights when they come in the output dtype: their float32 results are
    written over them, so ``converted`` must own its tensors (as the pipeline's do).
    Passed-through tensors are yielded as they came.
    """
    if not plan.processing.passes:
        # Raw weights: the conversion's own stream, whatever its order.
        yield from converted
        return
    stream = iter(converted)
    for group in plan.groups:
        if not group.passes:
            for planned in group.inputs:
                yield _next(stream, planned)
            continue
        tensors: dict[str, torch.Tensor] = {}
        for planned in group.inputs:
            _, tensor = _next(stream, planned)
            name = group.local(planned.key)
            # The passes work in place, and a converted tensor may share storage with others
            # (Q, K and V with each other): a float32 copy of our own even when already float32,
            # except for the chunked weights, used as they are unless they could share it. Their
            # results are rounded to the dtype they come in, so only when that is the output's
            # (or float32, which the output's cast then rounds once): a bfloat16 source for a
            # float16 output is processed as a float32 copy, like a block.
            if name in CHUNKED and tensor.dtype in (planned.dtype, torch.float32):
                tensors[name] = (
                    tensor
                    if _sole_user(tensor)
                    else tensor.clone(memory_format=torch.contiguous_format)
                )
            else:
                tensors[name] = tensor.to(torch.float32, copy=True)
            del tensor
        process_part(group.part, tensors, group.passes)
        yield from _emit(group, tensors)
    extra = next(stream, None)
    if extra is not None:
        raise PlanError(f"processing: {extra[0].key} was converted but not planned")


def _next(stream: Iterator[Converted], expected: PlannedTensor) -> Converted:
    item = next(stream, None)
    if item is None or item[0].key != expected.key:
        got = "the end of the conversion" if item is None else item[0].key
        raise PlanError(f"processing: expected {expected.key} next, got {got}")
    return item


def _sole_user(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers all of its memory (not a slice of a larger copy)."""
    return tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.nbytes


def _emit(group: Group, tensors: dict[str, torch.Tensor]) -> Iterator[Converted]:
    for planned in group.outputs:
        yield planned, tensors.pop(group.local(planned.key))
