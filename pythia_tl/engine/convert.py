"""One conversion, end to end: source -> plan -> converted tensors -> processing -> writer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl.dtypes import dtype_name
from pythia_tl.engine.finite import refuse_nonfinite
from pythia_tl.engine.hashing import SourceHashes, file_sha256
from pythia_tl.engine.pipeline import convert_tensors, finish
from pythia_tl.formats.safetensors import TensorEntry
from pythia_tl.mapping.plan import PlannedTensor, plan_conversion
from pythia_tl.output.guard import check_not_source
from pythia_tl.output.metadata import build_metadata
from pythia_tl.output.writer import write_safetensors
from pythia_tl.processing import NO_PROCESSING, Processing, plan_processing, process_stream
from pythia_tl.source.fingerprint import SourceFingerprint, read_by
from pythia_tl.source.reader import TensorReader
from pythia_tl.source.resolve import Provenance, ResolvedSource


@dataclass(frozen=True)
class ConvertOptions:
    """``dtype``: the output dtype name, or "auto" (the source's); ``overwrite``: replace an
    existing output (a regular file only); ``hash_output``: also hash the written file (for the
    result); ``allow_nonfinite``: write NaN and infinity (from the source, or from a cast out of
    the output dtype's range) instead of refusing them, and record that in the metadata."""

    dtype: str = "auto"
    overwrite: bool = False
    hash_output: bool = False
    processing: Processing = NO_PROCESSING
    allow_nonfinite: bool = False


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
    plan = plan_conversion(source.checkpoint, options.dtype)
    processing = options.processing
    written = plan_processing(plan, processing)
    provenance = source.provenance
    checkpoint = source.checkpoint
    entries = [TensorEntry(t.key, t.dtype, t.shape) for t in written.tensors]

    source_files = read_by(checkpoint)
    check_not_source(output, source_files, checkpoint.folder)
    unchanged = SourceFingerprint(source_files)

    def metadata(sha256: dict[str, str]) -> dict[str, str]:
        return build_metadata(
            plan.config, plan.dtype, provenance, sha256, processing, options.allow_nonfinite
        )

    def finished(planned: PlannedTensor, tensor: torch.Tensor) -> torch.Tensor:
        converted = finish(tensor, planned)
        if not options.allow_nonfinite:
            refuse_nonfinite(planned.key, converted, tensor)
        return converted

    def final_metadata() -> dict[str, str]:
        digests = hashes.checked(provenance.expected_sha256)
        unchanged.check()  # the last moment before the file is published
        return metadata(digests)

    with (
        _one_torch_thread() if not processing.passes else nullcontext(),
        SourceHashes(checkpoint.files) as hashes,
        TensorReader(checkpoint) as reader,
    ):
        size = write_safetensors(
            output,
            entries,
            (
                finished(planned, tensor)
                for planned, tensor in process_stream(written, convert_tensors(plan, reader))
            ),
            metadata=final_metadata,
            reserve_metadata=metadata(dict.fromkeys(hashes.names, "0" * 64)),
            overwrite=options.overwrite,
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
        processing=processing.passes,
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
