"""One conversion into memory instead of a file: the engine's plan, reader and pipeline, the
tensors handed to the caller as they come.

``engine.convert.convert`` writes the same stream into a file; this is its other end, for the
Python API (``tensors``, and ``load`` of a folder or an exported model). The reading is the
same: only the byte ranges the selection needs (a Hub revision not in the cache is streamed, a
partial one by its ranges), the source hashed as it is read when read whole, non-finite values
refused unless allowed.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from pythia_tl.engine.finite import refuse_nonfinite
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.engine.output_plan import plan_output
from pythia_tl.engine.pipeline import convert_tensors, finish
from pythia_tl.engine.reading import open_source
from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.processing import process_stream

if TYPE_CHECKING:
    import torch

    from pythia_tl.source.resolve import ResolvedSource


def convert_in_memory(source: ResolvedSource, options: ConvertOptions) -> dict[str, torch.Tensor]:
    """The output tensors a conversion of ``source`` with ``options`` would write, by key, in
    the order it would write them (``overwrite`` and ``hash_output`` do not apply)."""
    checkpoint, provenance = source.checkpoint, source.provenance
    out = plan_output(
        plan_conversion(checkpoint, options.dtype), options.processing, options.selection
    )
    tensors: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        reader, order, digests = open_source(
            stack, checkpoint, out.conversion, provenance.expected_sha256, whole=not out.is_partial
        )
        stream = process_stream(out.processing, convert_tensors(out.conversion, reader, order))
        for planned, tensor in out.written(stream):
            converted = finish(tensor, planned)
            if not options.allow_nonfinite:
                refuse_nonfinite(planned.key, converted, tensor)
            tensors[planned.key] = converted
        digests()  # the sha256 checks of a whole read (a byte changed on the way is an error)
    return {t.key: tensors[t.key] for t in out.tensors}
