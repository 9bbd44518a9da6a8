"""TransformerLens' checkpoint fields of a model converted from a step branch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pythia_tl.source.names import resolve_model_name
from pythia_tl.source.schedule import STEP_BRANCH, checkpoint_schedule


def checkpoint_fields(source: str, revision: str) -> dict[str, Any]:
    """``checkpoint_value`` and ``checkpoint_label_type`` when ``revision`` is a step branch of
    a Hub model, and ``checkpoint_index`` too when the model's schedule is known (no network)."""
    match = STEP_BRANCH.fullmatch(revision)
    if match is None or not source or Path(source).is_absolute():
        return {}
    step = int(match[1])
    fields: dict[str, Any] = {"checkpoint_value": step, "checkpoint_label_type": "step"}
    model = resolve_model_name(source)
    if model.has_known_schedule:
        steps = checkpoint_schedule(model).steps
        if step in steps:
            fields["checkpoint_index"] = steps.index(step)
    return fields
