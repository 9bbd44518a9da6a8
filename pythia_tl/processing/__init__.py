"""TransformerLens' weight processing (fold LayerNorm, centre the writing weights, centre the
unembedding, fold the value biases), applied while converting, part by part.

``plan_processing`` works out the written tensors from a conversion plan alone;
``process_stream`` processes the converted tensors as they stream past.
"""

from pythia_tl.processing.passes import NO_PROCESSING, TL_ORDER, Processing, ProcessingPass
from pythia_tl.processing.plan import ProcessingPlan, plan_processing
from pythia_tl.processing.stream import process_stream

__all__ = [
    "NO_PROCESSING",
    "TL_ORDER",
    "Processing",
    "ProcessingPass",
    "ProcessingPlan",
    "plan_processing",
    "process_stream",
]
