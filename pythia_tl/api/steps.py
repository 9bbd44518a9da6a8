"""The model and steps the across-steps API (``tensors``, ``trace``) is asked for."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pythia_tl.errors import Param, UsageError
from pythia_tl.source.names import ModelName, resolve_model_name

if TYPE_CHECKING:
    from pythia_tl.batch.step_spec import StepSpec


def hub_model_param(model: str) -> ModelName:
    """The Hub model ``model`` names; a local folder is refused (steps are Hub branches)."""
    if Path(model).expanduser().is_dir() or model.startswith((".", "/", "~")):
        raise UsageError(
            Param("model"),
            f" {model!r} is a local folder: training steps are branches of a Hub model (a repo "
            "id such as EleutherAI/pythia-70m, or a short name such as pythia-70m)",
        )
    return resolve_model_name(model)


def step_spec(steps: str | Iterable[int]) -> StepSpec:
    """``steps`` as a SPEC: the text ``all``/``0,1,1000:5000:1000``, or step numbers."""
    # Imported here: the batch package imports the engine, and so torch.
    from pythia_tl.batch.step_spec import StepSpec, parse_step_spec

    if isinstance(steps, str):
        return parse_step_spec(steps)
    numbers = list(steps)
    if not numbers:
        raise UsageError(Param("steps"), ": no steps given")
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise UsageError(Param("steps"), f": {number!r} is not a step number")
    return StepSpec(tuple(sorted(set(numbers))))


def key_globs(keys: str | Iterable[str]) -> str:
    """TransformerLens key globs as the comma list ``parse_selection`` takes."""
    return keys if isinstance(keys, str) else ",".join(keys)
