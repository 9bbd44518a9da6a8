"""Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts."""

from __future__ import annotations

import functools

CONVERTER_NAME = "pythia-tl"


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pythia-tl")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def __getattr__(name: str) -> str:
    # Looked up on first use, not on import: importing the package stays instant, so the
    # command line can catch Ctrl-C from its first moment (pythia_tl.launch).
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'pythia_tl' has no attribute {name!r}")
