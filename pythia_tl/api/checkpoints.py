"""``pythia_tl.checkpoints``: a model's training checkpoints."""

from __future__ import annotations

from pythia_tl.api.steps import hub_model_param
from pythia_tl.source.schedule import CheckpointList, hub_checkpoints


def checkpoints(model: str) -> CheckpointList:
    """The training checkpoints of Hub model ``model`` (a repo id or a short name), in step
    order: each with its ``index`` (TransformerLens' ``checkpoint_index``), ``step``,
    ``revision``, ``tokens`` seen and ``commit`` (the Hub's, when it answers; ``origin`` says
    where the list came from), as ``pythia-tl checkpoints`` lists them."""
    return hub_checkpoints(hub_model_param(model))
