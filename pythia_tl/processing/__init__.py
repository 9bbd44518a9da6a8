"""TransformerLens' weight processing (fold LayerNorm, centre the writing weights, centre the
unembedding, fold the value biases), applied while converting, part by part.

``plan_processing`` works out the written tensors from a conversion plan alone;
``process_stream`` processes the converted tensors as they stream past. Both are imported on
first use (they need torch); the passes themselves do not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pythia_tl.processing.passes import NO_PROCESSING, TL_ORDER, Processing, ProcessingPass

if TYPE_CHECKING:
    from pythia_tl.processing.plan import ProcessingPlan, plan_processing
    from pythia_tl.processing.stream import process_stream

_LAZY = {
    "ProcessingPlan": "pythia_tl.processing.plan",
    "plan_processing": "pythia_tl.processing.plan",
    "process_stream": "pythia_tl.processing.stream",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NO_PROCESSING",
    "TL_ORDER",
    "Processing",
    "ProcessingPass",
    "ProcessingPlan",
    "plan_processing",
    "process_stream",
]
