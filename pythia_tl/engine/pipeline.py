"""The streaming pipeline: each planned source read, converted into its outputs and let go.

A worker thread converts the next source while the caller uses (writes) the current outputs;
torch's copies and the kernel's writes release the GIL, so the two overlap on two cores.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import torch

from pythia_tl.engine.buffers import BufferPool
from pythia_tl.engine.copy import Copier
from pythia_tl.mapping.plan import ConversionPlan, PlannedSource, PlannedTensor

Converted = tuple[PlannedTensor, torch.Tensor]


class Reader(Protocol):
    """Where source tensors come from: a local ``TensorReader`` or a remote ``StreamReader``."""

    def read(self, name: str) -> torch.Tensor: ...

    def release(self, name: str) -> None: ...


# How far (in converted bytes) the worker may run ahead of the caller: enough to keep it busy
# while a large tensor is written, small next to the memory bound (2 x the largest tensor).
AHEAD_BYTES = 64 << 20


def convert_tensors(
    plan: ConversionPlan, reader: Reader, order: Sequence[PlannedSource] | None = None
) -> Iterator[Converted]:
    """The planned tensors, converted source by source in plan order (or ``order``: the order a
    stream delivers them), each contiguous and in memory of its own
    (never a view of the source's buffer). They keep the source dtype, except that a lossless
    widening to the output dtype (float16 -> float32) is done here already; ``finish`` casts.

    The worker runs up to ``AHEAD_BYTES`` ahead; a source's pages are released as soon as it has
    been copied. Copies go to memory that is reused once the caller has let go of the tensors in
    it (``BufferPool``), except for the embeddings.
    """
    sources = plan.sources if order is None else order
    # Memory reused for every tensor up to half the largest (all but the embeddings).
    half = max((planned.nbytes for planned in plan.tensors), default=0) // 2
    copier = Copier(BufferPool(largest=half, limit=half + 2 * AHEAD_BYTES))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pythia-tl-convert") as worker:
        pending: deque[tuple[int, Future[list[Converted]]]] = deque()
        ahead = 0  # bytes of the sources submitted to the worker and not yet handed out
        submitted = 0
        try:
            while submitted < len(sources) or pending:
                # Keep the worker busy through runs of small tensors, but hold at most
                # AHEAD_BYTES (plus one source's outputs) besides the one in use.
                while submitted < len(sources) and (not pending or ahead < AHEAD_BYTES):
                    source = sources[submitted]
                    size = sum(planned.nbytes for planned in source.outputs)
                    pending.append((size, worker.submit(_convert, source, reader, copier)))
                    ahead += size
                    submitted += 1
                size, future = pending.popleft()
                ahead -= size
                converted = future.result()
                while converted:
                    yield converted.pop(0)
        finally:
            for _, future in pending:  # the caller stopped early: drop the work not yet begun
                future.cancel()


def _convert(source: PlannedSource, reader: Reader, copier: Copier) -> list[Converted]:
    if source.name is None:
        return [(source.outputs[0], source.made())]
    tensor = reader.read(source.name)
    dtypes = [_working_dtype(planned) for planned in source.outputs]
    copies = [
        copier.owned(view, tensor, dtype)
        for view, dtype in zip(source.convert(tensor), dtypes, strict=True)
    ]
    del tensor
    reader.release(source.name)
    return [
        (planned, copier.cast(copy, dtype))
        for planned, copy, dtype in zip(source.outputs, copies, dtypes, strict=True)
    ]


def _working_dtype(planned: PlannedTensor) -> torch.dtype:
    """The output dtype when casting to it loses nothing (a wider float), else the source's."""
    output = planned.dtype.torch
    if planned.source_dtype is None:
        return output
    source = planned.source_dtype.torch
    if (
        source.is_floating_point
        and output.is_floating_point
        and torch.promote_types(source, output) == output
    ):
        return output
    return source


def finish(tensor: torch.Tensor, planned: PlannedTensor) -> torch.Tensor:
    """Cast to the output dtype and lay out contiguously (a no-op when already so)."""
    return tensor.to(planned.dtype.torch).contiguous()
