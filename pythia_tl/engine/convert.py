"""One conversion, end to end: source -> plan -> converted tensors -> processing -> writer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl.engine.finite import refuse_nonfinite
from pythia_tl.engine.hashing import file_sha256
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.engine.output_plan import plan_output
from pythia_tl.engine.pipeline import convert_tensors, finish
from pythia_tl.engine.reading import computes_sha256, open_source
from pythia_tl.formats.safetensors import TensorEntry
from pythia_tl.mapping.plan import PlannedTensor, plan_conversion
from pythia_tl.output.guard import check_not_source
from pythia_tl.output.metadata import build_metadata
from pythia_tl.output.writer import write_safetensors
from pythia_tl.processing import process_stream
from pythia_tl.source.fingerprint import SourceFingerprint, read_by
from pythia_tl.source.resolve import Provenance, ResolvedSource


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
    options: ConvertOptions = ConvertOptions(),  # noqa: B008 (frozen)
    on_bytes: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """Convert an opened source into a TransformerLens safetensors file at ``output``."""
    started = time.perf_counter()
    checkpoint, provenance, processing = source.checkpoint, source.provenance, options.processing
    full = plan_conversion(checkpoint, options.dtype)
    out = plan_output(full, processing, options.selection)
    plan = out.conversion
    entries = [TensorEntry(t.key, t.dtype, t.shape) for t in out.tensors]

    source_files = read_by(checkpoint)
    check_not_source(output, source_files, checkpoint.folder)
    unchanged = SourceFingerprint(source_files)

    def metadata(sha256: dict[str, str]) -> dict[str, str]:
        return build_metadata(
            full.config,
            full.dtype,
            provenance,
            sha256,
            processing,
            options.selection,
            options.allow_nonfinite,
            sha256_computed=computes_sha256(checkpoint, whole=not out.is_partial),
        )

    def finished(planned: PlannedTensor, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
        converted = finish(tensor, planned)
        if not options.allow_nonfinite:
            refuse_nonfinite(planned.key, converted, tensor)
        return planned.key, converted

    def final_metadata(digests: Callable[[], dict[str, str]]) -> dict[str, str]:
        sha256 = digests()
        unchanged.check()  # the last moment before the file is published
        return metadata(sha256)

    names = [file.name for file in checkpoint.files]
    with ExitStack() as stack:
        if not processing.passes:
            stack.enter_context(_ONE_TORCH_THREAD.held())
        reader, order, digests = open_source(
            stack, checkpoint, plan, provenance.expected_sha256, whole=not out.is_partial
        )
        converted = out.written(
            process_stream(out.processing, convert_tensors(plan, reader, order))
        )
        size = write_safetensors(
            output,
            entries,
            (finished(planned, tensor) for planned, tensor in converted),
            metadata=lambda: final_metadata(digests),
            reserve_metadata=metadata(dict.fromkeys(names, "0" * 64)),
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
        dtype=full.dtype.name,
        processing=processing.passes,
    )


class _OneTorchThread:
    """Run torch's operations on one thread each while converting.

    The conversion keeps the cores busy with threads of its own (one converts, one writes, one
    hashes the source); torch's thread pool on top would only make its idle threads spin for
    work, taking the CPU the hashing needs. Processing, whose arithmetic gains from torch's
    threads, keeps them (benchmarks/RESULTS-12b.md was made with it).

    torch's thread count belongs to the process, and ``batch --jobs`` converts in several
    threads at once: the count is lowered by the first conversion in and restored by the last
    one out, so that overlapping conversions cannot leave it at one thread or restore it early.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._threads = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if not self._inside:
                self._threads = torch.get_num_threads()
                torch.set_num_threads(1)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if not self._inside:
                    torch.set_num_threads(self._threads)


_ONE_TORCH_THREAD = _OneTorchThread()
