"""One conversion, end to end: source -> plan -> tensors -> writer."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl import CONVERTER_NAME, __version__
from pythia_tl.converters.steps import apply_chain
from pythia_tl.converters.tl_config import tl_config
from pythia_tl.errors import SourceError
from pythia_tl.plan import Plan, PlannedTensor, build_plan, dtype_name
from pythia_tl.processing import NO_PROCESSING, Processing, plan_processing, process_stream
from pythia_tl.source import Provenance, ResolvedSource, resolve_source
from pythia_tl.source.checkpoint import TensorReader
from pythia_tl.writer import TensorEntry, write_safetensors

_CHUNK = 16 << 20


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
    with ThreadPoolExecutor(max_workers=1) as pool, checkpoint.open() as reader:
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


def convert_tensors(
    plan: Plan, reader: TensorReader
) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """The planned tensors, converted in plan order, still in the source dtype (``finish`` casts
    them), each contiguous and in memory of its own (never a view of the mapped source).

    Rules that share a source and all steps but the last (the Q/K/V split of
    ``query_key_value``) form one group: the source is read once, rearranged once, and each part
    is a contiguous slice of that one copy. A worker thread converts the next group while the
    caller uses the current one (torch's copies and the kernel's writes release the GIL, so the
    two overlap on two cores); each source's pages are released as soon as it is converted.
    """
    groups = _groups(plan)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pythia-tl-convert") as worker:
        upcoming = worker.submit(_convert_group, groups[0], reader) if groups else None
        for index in range(len(groups)):
            assert upcoming is not None
            converted = upcoming.result()
            if index + 1 < len(groups):
                upcoming = worker.submit(_convert_group, groups[index + 1], reader)
            while converted:
                yield converted.pop(0)


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
    group: list[PlannedTensor], reader: TensorReader
) -> list[tuple[PlannedTensor, torch.Tensor]]:
    first = group[0]
    if first.source is None:
        return [(p, apply_chain(p.steps, torch.empty(0, dtype=p.dtype))) for p in group]
    source = reader.read(first.source)
    shared = apply_chain(first.steps[:-1], source)
    converted = []
    for planned in group:
        tensor = apply_chain(planned.steps[-1:], shared).contiguous()
        if tensor.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
            tensor = tensor.clone()  # still the mapped source itself: take a copy of our own
        converted.append((planned, tensor))
    del source, shared
    reader.release(first.source)
    return converted


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
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
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
