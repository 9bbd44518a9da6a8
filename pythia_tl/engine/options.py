"""What a conversion is asked for (``ConvertOptions``), apart from the engine, so that a command
can state it, and refuse its output, without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from pythia_tl.mapping.selection import EVERY_TENSOR, Selection
from pythia_tl.processing import NO_PROCESSING, Processing


@dataclass(frozen=True)
class ConvertOptions:
    """``dtype``: the output dtype name, or "auto" (the source's); ``overwrite``: replace an
    existing output (a regular file only); ``hash_output``: also hash the written file (for the
    result); ``selection``: write only these tensors (and read only what they need);
    ``allow_nonfinite``: write NaN and infinity (from the source, or from a cast out of the
    output dtype's range) instead of refusing them, and record that in the metadata."""

    dtype: str = "auto"
    overwrite: bool = False
    hash_output: bool = False
    processing: Processing = NO_PROCESSING
    selection: Selection = EVERY_TENSOR
    allow_nonfinite: bool = False
