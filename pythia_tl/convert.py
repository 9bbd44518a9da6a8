"""One conversion, end to end: source -> plan -> tensors -> writer."""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl import CONVERTER_NAME, __version__
from pythia_tl.buffers import BufferPool
from pythia_tl.converters.steps import Rearrange, Step, apply_chain
from pythia_tl.converters.tl_config import tl_config
from pythia_tl.errors import SourceError
from pythia_tl.plan import Plan, PlannedTensor, build_plan, dtype_name
from pythia_tl.processing import NO_PROCESSING, Processing, plan_processing, process_stream
from pythia_tl.source import Provenance, ResolvedSource, resolve_source
from pythia_tl.source.checkpoint import TensorReader
from pythia_tl.writer import TensorEntry, write_safetensors

_CHUNK = 1 << 20
# How far (in converted bytes) the worker may run ahead of the writer: enough to keep it busy
# while a large tensor is written, small next to the memory bound (2 x the largest tensor).
_AHEAD_BYTES = 64 << 20
# Source rows per strip of a transposed copy (see _copy).
_STRIP = 64


@dataclass(frozen=True)
class ConvertOptions:
    dtype: str = "auto"
    force: bool = False
    hash_output: bool = False
    processing: Processing = NO_PROCESSING


@dataclass(frozen=True)
class ConversionResult:
    output: Path
    sha256: str | None
    bytes: int
    tensors: int
    seconds: float
    source: str
    revision: str | None
    commit: str | None
    dtype: str
    processing: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "output": str(self.output),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "tensors": self.tensors,
            "seconds": round(self.seconds, 3),
            "source": self.source,
            "revision": self.revision,
            "commit": self.commit,
            "dtype": self.dtype,
            "processing": list(self.processing),
        }


def default_output_name(provenance: Provenance, revision_given: bool) -> str:
    """``<model-name>[-<revision>].safetensors``; the revision only when one was asked for."""
    suffix = f"-{provenance.revision}" if revision_given and provenance.revision else ""
    return f"{provenance.model_name}{suffix}.safetensors"


def convert(
    source: ResolvedSource,
    output: Path,
    options: ConvertOptions = ConvertOptions(),
    on_bytes: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """Convert an opened source into a TransformerLens safetensors file at ``output``."""
    started = time.perf_counter()
    plan = build_plan(source.checkpoint, options.dtype)
    processing = options.processing
    written = plan_processing(plan, processing)
    provenance = source.provenance
    checkpoint = source.checkpoint
    entries = [TensorEntry(t.key, t.dtype, t.shape) for t in written.tensors]
    with (
        _one_torch_thread() if not processing.steps else nullcontext(),
        ThreadPoolExecutor(max_workers=1) as pool,
        checkpoint.open() as reader,
    ):
        # Source files are hashed on the second core while the first converts.
        hashes = {file.name: pool.submit(file_sha256, file) for file in checkpoint.files}
        size = write_safetensors(
            output,
            entries,
            (
                finish(tensor, planned)
                for planned, tensor in process_stream(written, convert_tensors(plan, reader))
            ),
            metadata=lambda: output_metadata(
                plan, provenance, _checked(hashes, provenance), processing
            ),
            reserve_metadata=output_metadata(
                plan, provenance, dict.fromkeys(hashes, "0" * 64), processing
            ),
            overwrite=options.force,
            on_bytes=on_bytes,
        )
    digest = file_sha256(output) if options.hash_output else None
    return ConversionResult(
        output=output,
        sha256=digest,
        bytes=size,
        tensors=len(entries),
        seconds=time.perf_counter() - started,
        source=provenance.source,
        revision=provenance.revision,
        commit=provenance.commit,
        dtype=dtype_name(plan.dtype),
        processing=processing.steps,
    )


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch's operations on one thread each while converting.

    The conversion keeps the cores busy with threads of its own (one converts, one writes, one
    hashes the source); torch's thread pool on top would only make its idle threads spin for
    work, taking the CPU the hashing needs. Processing, whose arithmetic gains from torch's
    threads, keeps them (benchmarks/RESULTS-12b.md was made with it).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def convert_tensors(
    plan: Plan, reader: TensorReader
) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """The planned tensors, converted in plan order, each contiguous and in memory of its own
    (never a view of the mapped source). They keep the source dtype, except that a lossless
    widening to the output dtype (float16 -> float32) is done here already; ``finish`` casts.

    Rules that share a source and all steps but the last (the Q/K/V split of
    ``query_key_value``) form one group: the source is read once and rearranged with one copy,
    of which each part is a contiguous slice. A worker thread converts the next group while the
    caller uses the current one (torch's copies and the kernel's writes release the GIL, so the
    two overlap on two cores), up to ``_AHEAD_BYTES`` ahead; a source's pages are released as
    soon as it has been copied. Copies go to memory that is reused once the caller has let go
    of the tensors in it (``BufferPool``), except for the embeddings.
    """
    groups = _groups(plan)
    # Memory reused for every tensor up to half the largest (all but the embeddings).
    half = max((planned.nbytes for planned in plan.tensors), default=0) // 2
    pool = BufferPool(largest=half, limit=half + 2 * _AHEAD_BYTES)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pythia-tl-convert") as worker:
        pending: deque[tuple[int, Future[list[tuple[PlannedTensor, torch.Tensor]]]]] = deque()
        ahead = 0  # bytes of the groups submitted to the worker and not yet handed out
        submitted = 0
        try:
            while submitted < len(groups) or pending:
                # Keep the worker busy through runs of small tensors, but hold at most
                # _AHEAD_BYTES (plus one group) of converted tensors besides the one in use.
                while submitted < len(groups) and (not pending or ahead < _AHEAD_BYTES):
                    size = sum(planned.nbytes for planned in groups[submitted])
                    future = worker.submit(_convert_group, groups[submitted], reader, pool)
                    pending.append((size, future))
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


def _groups(plan: Plan) -> list[list[PlannedTensor]]:
    """Consecutive planned tensors that read the same source through the same leading steps."""
    groups: list[list[PlannedTensor]] = []
    previous: tuple[str, tuple[object, ...]] | None = None
    for planned in plan.tensors:
        key = None if planned.source is None else (planned.source, planned.steps[:-1])
        if key is None or key != previous:
            groups.append([])
        groups[-1].append(planned)
        previous = key
    return groups


def _convert_group(
    group: list[PlannedTensor], reader: TensorReader, pool: BufferPool
) -> list[tuple[PlannedTensor, torch.Tensor]]:
    first = group[0]
    if first.source is None:
        return [(p, apply_chain(p.steps, torch.empty(0, dtype=p.dtype))) for p in group]
    source = reader.read(first.source)
    shared = _apply_steps(first.steps[:-1], source, pool)
    dtypes = [_working_dtype(p) for p in group]
    copies = [
        _own_copy(_apply_steps(p.steps[-1:], shared, pool), source, dtype, pool)
        for p, dtype in zip(group, dtypes, strict=True)
    ]
    del source, shared
    reader.release(first.source)
    return [
        (p, _cast(copy, dtype, pool)) for p, copy, dtype in zip(group, copies, dtypes, strict=True)
    ]


def _apply_steps(steps: Sequence[Step], tensor: torch.Tensor, pool: BufferPool) -> torch.Tensor:
    """``apply_chain``, with the copy a rearrange may need made into the pool's memory."""
    for step in steps:
        if not isinstance(step, Rearrange):
            tensor = step.apply(tensor)
            continue
        unmerged, shape = step.apply_unmerged(tensor)
        try:
            tensor = unmerged.view(shape)
        except RuntimeError:  # the merged axes' strides do not line up: a copy is needed
            tensor = _copy(unmerged, unmerged.dtype, pool).view(shape)
    return tensor


def _own_copy(
    view: torch.Tensor, source: torch.Tensor, dtype: torch.dtype, pool: BufferPool
) -> torch.Tensor:
    """``view`` laid out contiguously in memory that is not the mapped ``source``'s, in
    ``dtype`` when that takes no extra pass.

    A strided view is copied in its own dtype and cast afterwards (``_cast``): casting while
    transposing was slower than the two passes when profiled. A slice of an earlier copy (Q, K
    or V of the rearranged ``query_key_value``) is used as it is.
    """
    shares_source = view.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    if view.is_contiguous() and not shares_source:
        return view
    return _copy(view, view.dtype if not view.is_contiguous() else dtype, pool)


def _copy(view: torch.Tensor, dtype: torch.dtype, pool: BufferPool) -> torch.Tensor:
    """A contiguous copy of ``view`` in the pool's memory.

    Axes that step through memory together are merged first, so that a transpose seen through
    more than two axes (``W_O``'s ``d_model (head d_head) -> head d_head d_model``) is copied as
    the 2-D transpose it is rather than through torch's much slower general strided loop. A 2-D
    transpose is copied in strips of ``_STRIP`` source rows, each strip's reads staying within
    the CPU's first-level cache, which profiling found faster than torch's own blocked 2-D
    transpose.
    """
    out = pool.empty(tuple(view.shape), dtype)
    sizes, strides = _merged_axes(tuple(view.shape), tuple(view.stride()))
    source, target = view.as_strided(sizes, strides), out.view(sizes)
    if len(sizes) == 2 and strides[0] == 1:
        for start in range(0, sizes[1], _STRIP):
            target[:, start : start + _STRIP].copy_(source[:, start : start + _STRIP])
    else:
        target.copy_(source)
    return out


def _merged_axes(
    shape: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``shape`` and ``stride`` with each run of axes that step through memory as one axis
    merged into one (the same elements in the same order, fewer axes)."""
    sizes: list[int] = []
    strides: list[int] = []
    for size, step in zip(shape, stride, strict=True):
        if size == 1:
            continue
        if sizes and strides[-1] == size * step:
            sizes[-1] *= size
            strides[-1] = step
        else:
            sizes.append(size)
            strides.append(step)
    return tuple(sizes) or (1,), tuple(strides) or (1,)


def _cast(tensor: torch.Tensor, dtype: torch.dtype, pool: BufferPool) -> torch.Tensor:
    if tensor.dtype == dtype:
        return tensor
    return _copy(tensor, dtype, pool)


def _working_dtype(planned: PlannedTensor) -> torch.dtype:
    """The output dtype when casting to it loses nothing (a wider float), else the source's."""
    source, output = planned.source_dtype, planned.dtype
    if source is None or (
        source.is_floating_point
        and output.is_floating_point
        and torch.promote_types(source, output) == output
    ):
        return output
    return source


def finish(tensor: torch.Tensor, planned: PlannedTensor) -> torch.Tensor:
    """Cast to the output dtype and lay out contiguously (a no-op when already so)."""
    return tensor.to(planned.dtype).contiguous()


def output_metadata(
    plan: Plan,
    provenance: Provenance,
    source_sha256: Mapping[str, str],
    processing: Processing = NO_PROCESSING,
) -> dict[str, str]:
    """The ``__metadata__`` of an output file (safetensors metadata values are strings)."""
    cfg = tl_config(
        plan.config, provenance.model_name, provenance.repo_id, processing.normalization_type
    )
    return {
        "format": "pt",
        "tl_config": json.dumps(cfg),
        "source": provenance.source,
        "revision": provenance.revision or "",
        "commit": provenance.commit or "",
        "source_files": json.dumps(dict(sorted(source_sha256.items()))),
        "converter": CONVERTER_NAME,
        "converter_version": __version__,
        "dtype": dtype_name(plan.dtype),
        "processing": json.dumps(list(processing.steps)),
    }


def file_sha256(path: Path) -> str:
    # One small buffer, refilled: the bytes are still in the CPU's cache when hashed, which makes
    # hashing ~40% cheaper than reading fresh 16 MB chunks (see benchmarks/RESULTS.md).
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _checked(hashes: Mapping[str, Future[str]], provenance: Provenance) -> dict[str, str]:
    """The source files' sha256, each checked against what the Hub announced for it (the
    download itself is not checked by huggingface_hub)."""
    digests = {name: future.result() for name, future in hashes.items()}
    for name, digest in digests.items():
        expected = provenance.expected_sha256.get(name)
        if expected is not None and digest != expected:
            raise SourceError(
                f"{name}: sha256 {digest} differs from the {expected} the Hub announced; the "
                "cached download is corrupt (delete it from the cache and retry)"
            )
    return digests


__all__ = ["ConversionResult", "ConvertOptions", "convert", "resolve_source"]
