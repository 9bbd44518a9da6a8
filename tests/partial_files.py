"""Rewriting a converted file with some tensors left out or added, for tests of partial and
mismatched files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def rewrite(
    source: Path,
    target: Path,
    *,
    drop: tuple[str, ...] = (),
    add: dict[str, torch.Tensor] | None = None,
    selection: dict[str, Any] | None = None,
) -> Path:
    """``source`` without the tensors ``drop``, with ``add``, and with metadata ``selection``."""
    with safe_open(source, framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if key not in drop}  # noqa: SIM118
    tensors.update(add or {})
    if selection is not None:
        metadata["selection"] = json.dumps(selection)
    save_file(tensors, target, metadata=metadata)
    return target
