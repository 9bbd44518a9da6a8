"""The MODEL argument of the commands that work on a Hub model's training checkpoints."""

from __future__ import annotations

from pathlib import Path

from pythia_tl.errors import UsageError
from pythia_tl.source.names import ModelName, resolve_model_name


def hub_model(name: str, command: str) -> ModelName:
    """The Hub model ``name`` names; a local folder is refused with what ``command`` accepts."""
    if Path(name).expanduser().is_dir() or name.startswith((".", "/", "~")):
        raise UsageError(
            f"{name} is a local folder: '{command}' takes Hub models (a repo id such as "
            "EleutherAI/pythia-70m, or a short name such as pythia-70m); convert a folder with "
            f"'pythia-tl convert {name}'"
        )
    return resolve_model_name(name)
