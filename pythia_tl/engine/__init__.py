"""The conversion engine: copy kernels, the buffer pool, the streaming pipeline and ``convert``
(``pythia_tl.engine.convert``). Nothing is imported here, so that planning an output
(``output_plan``) does not import torch."""
