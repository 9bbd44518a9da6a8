"""Reading back what pythia-tl wrote: tensor headers and the metadata recording the conversion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from pythia_tl.errors import OutputFileError


@dataclass(frozen=True)
class OutputInfo:
    path: Path
    size: int
    metadata: dict[str, str]
    tensors: dict[str, tuple[str, list[int]]]

    @property
    def tl_config(self) -> dict[str, Any]:
        return self._json_field("tl_config", dict)

    @property
    def source_files(self) -> dict[str, str]:
        return self._json_field("source_files", dict)

    @property
    def processing(self) -> list[str]:
        return self._json_field("processing", list)

    def _json_field(self, key: str, kind: type) -> Any:
        raw = self.metadata.get(key)
        if raw is None:
            raise OutputFileError(
                f"{self.path}: metadata has no {key!r}; not written by pythia-tl?"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise OutputFileError(f"{self.path}: metadata {key!r} is not valid JSON") from None
        if not isinstance(value, kind):
            raise OutputFileError(f"{self.path}: metadata {key!r} is not a JSON {kind.__name__}")
        return value

    def to_json(self) -> dict[str, Any]:
        metadata: dict[str, Any] = dict(self.metadata)
        for key in ("tl_config", "source_files", "processing"):
            if key in metadata:
                metadata[key] = self._json_field(key, object)
        return {
            "path": str(self.path),
            "bytes": self.size,
            "metadata": metadata,
            "tensors": {name: {"dtype": d, "shape": s} for name, (d, s) in self.tensors.items()},
        }


def read_output(path: Path) -> OutputInfo:
    """The header of a safetensors file (no tensor data is read)."""
    if not path.is_file():
        raise OutputFileError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {}
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                piece = handle.get_slice(name)
                tensors[name] = (piece.get_dtype(), list(piece.get_shape()))
    except SafetensorError as exc:
        raise OutputFileError(f"{path}: not a valid safetensors file ({exc})") from None
    return OutputInfo(path, path.stat().st_size, metadata, tensors)
