"""Where a checkpoint comes from: a local folder or one revision of a Hub repository.

Opening a checkpoint needs torch; names, schedules and the Hub do not, so ``resolve_source`` and
its kin are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pythia_tl.source.names import ModelName, resolve_model_name

if TYPE_CHECKING:
    from pythia_tl.source.resolve import (
        Provenance,
        ResolvedSource,
        open_hub_revision,
        resolve_source,
    )

_LAZY = ("Provenance", "ResolvedSource", "open_hub_revision", "resolve_source")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module("pythia_tl.source.resolve"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ModelName",
    "Provenance",
    "ResolvedSource",
    "open_hub_revision",
    "resolve_model_name",
    "resolve_source",
]
