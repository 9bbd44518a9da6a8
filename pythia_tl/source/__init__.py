"""Where a checkpoint comes from: a local folder or one revision of a Hub repository."""

from pythia_tl.source.names import ModelName, resolve_model_name
from pythia_tl.source.resolve import Provenance, ResolvedSource, open_hub_revision, resolve_source

__all__ = [
    "ModelName",
    "Provenance",
    "ResolvedSource",
    "open_hub_revision",
    "resolve_model_name",
    "resolve_source",
]
