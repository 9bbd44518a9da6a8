"""Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts.

``pythia_tl.load(path)`` gives a converted file as a TransformerLens ``HookedTransformer``;
``pythia_tl.export_hf_folder(path, folder)`` writes it back as a Hugging Face GPT-NeoX folder.
Both, and ``__version__``, are looked up on first use: importing the package (and starting the
command line, which must catch Ctrl-C from its first moment) imports neither torch nor
TransformerLens.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

CONVERTER_NAME = "pythia-tl"

if TYPE_CHECKING:
    from pythia_tl.export import export_hf_folder
    from pythia_tl.loading import load

    __version__: str


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pythia-tl")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name == "load":
        from pythia_tl.loading import load

        return load
    if name == "export_hf_folder":
        from pythia_tl.export import export_hf_folder

        return export_hf_folder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONVERTER_NAME", "__version__", "export_hf_folder", "load"]
