"""Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts.

``pythia_tl.convert(source, output)`` converts one checkpoint into a file;
``pythia_tl.load(path)`` gives a converted file as a TransformerLens model (a
``HookedTransformer`` on TransformerLens 3, a ``TransformerBridge`` on 4);
``pythia_tl.checkpoints(model)`` lists a model's training checkpoints;
``pythia_tl.tensors(model, keys, steps)`` yields some keys step after step, in memory
(``stacked_tensors`` stacks them), and ``pythia_tl.trace`` writes them into one file;
``pythia_tl.export_hf_folder(path, folder)`` writes a file back as a Hugging Face GPT-NeoX folder.
All of them, and ``__version__``, are looked up on first use: importing the package (and starting
the command line, which must catch Ctrl-C from its first moment) imports neither torch nor
TransformerLens.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

CONVERTER_NAME = "pythia-tl"

if TYPE_CHECKING:
    from pythia_tl.api.checkpoints import checkpoints
    from pythia_tl.api.convert import convert
    from pythia_tl.api.tensors import stacked_tensors, tensors
    from pythia_tl.api.trace import trace
    from pythia_tl.export import export_hf_folder
    from pythia_tl.loading import load
    from pythia_tl.output.metadata import read_trace

    __version__: str


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pythia-tl")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


# Public name -> the module that defines it (imported on first use).
_LAZY = {
    "checkpoints": "pythia_tl.api.checkpoints",
    "convert": "pythia_tl.api.convert",
    "export_hf_folder": "pythia_tl.export",
    "load": "pythia_tl.loading",
    "read_trace": "pythia_tl.output.metadata",
    "stacked_tensors": "pythia_tl.api.tensors",
    "tensors": "pythia_tl.api.tensors",
    "trace": "pythia_tl.api.trace",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONVERTER_NAME",
    "__version__",
    "checkpoints",
    "convert",
    "export_hf_folder",
    "load",
    "read_trace",
    "stacked_tensors",
    "tensors",
    "trace",
]
