"""The conversion engine: copy kernels, the buffer pool, the streaming pipeline and ``convert``."""

from pythia_tl.engine.convert import ConversionResult, ConvertOptions, convert, default_output_name

__all__ = ["ConversionResult", "ConvertOptions", "convert", "default_output_name"]
