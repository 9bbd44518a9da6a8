"""Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pythia-tl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

CONVERTER_NAME = "pythia-tl"
