"""A checkpoint folder: its config, its weight files, and the tensors they declare.

Four layouts are read: ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, ``pytorch_model.bin``, and sharded ``.bin`` with
``pytorch_model.bin.index.json``. Safetensors is preferred when both are present. Only headers are
read here; tensor data is read later, one tensor at a time, through ``TensorReader``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open

from pythia_tl.errors import CheckpointError
from pythia_tl.source.config import NeoXConfig, read_config

Format = Literal["safetensors", "bin"]

# (format, single file, index file) in order of preference.
LAYOUTS: tuple[tuple[Format, str, str], ...] = (
    ("safetensors", "model.safetensors", "model.safetensors.index.json"),
    ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what its header says, before any of its data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder whose weight files and headers have been read and checked."""

    folder: Path
    config: NeoXConfig
    format: Format
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]

    def open(self) -> TensorReader:
        return TensorReader(self)


def weight_files_for(filenames: set[str]) -> tuple[Format, list[str]] | None:
    """Which files of a listing hold the weights (without their shards): the preferred layout's
    single file or index file, or None when no layout is present."""
    for fmt, single, index in LAYOUTS:
        if index in filenames:
            return fmt, [index]
        if single in filenames:
            return fmt, [single]
    return None


def open_checkpoint(folder: Path, allowed_root: Path | None = None) -> Checkpoint:
    """Read ``folder``'s config and weight headers.

    Every weight file must resolve inside ``allowed_root`` (default: the folder itself), so an
    index cannot make us read files elsewhere on the machine.
    """
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    config = read_config(folder / "config.json")
    root = (allowed_root or folder).resolve()
    listing = {p.name for p in folder.iterdir()}
    found = weight_files_for(listing)
    if found is None:
        expected = ", ".join(name for _, single, index in LAYOUTS for name in (single, index))
        raise CheckpointError(f"{folder}: no weights found; expected one of {expected}")
    fmt, (first,) = found
    path = folder / first
    shard_names = _read_index(path, folder) if first.endswith(".index.json") else None
    files = [_inside(folder / name, root, path) for name in shard_names or [first]]
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for info in _read_headers(file, fmt):
            if info.name in tensors:
                raise CheckpointError(
                    f"{file}: tensor {info.name} also stored in {tensors[info.name].file.name}"
                )
            tensors[info.name] = info
    if shard_names is not None:
        _check_index_matches(path, folder, tensors)
    return Checkpoint(folder, config, fmt, tuple(files), tensors)


def _read_index(path: Path, folder: Path) -> list[str]:
    """The shard file names of an index file, in first-use order."""
    weight_map = _load_weight_map(path)
    shards: list[str] = []
    for shard in weight_map.values():
        if shard not in shards:
            shards.append(shard)
    for shard in shards:
        if not (folder / shard).is_file():
            raise CheckpointError(f"{path}: names shard {shard!r}, which is missing from {folder}")
    return shards


def _load_weight_map(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON index ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: expected a non-empty 'weight_map' object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard:
            raise CheckpointError(
                f"{path}: weight_map[{name!r}] is {shard!r}, expected a file name in the "
                "checkpoint folder"
            )
    return weight_map


def _inside(path: Path, root: Path, named_by: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise CheckpointError(
            f"{named_by}: {path.name} resolves to {resolved}, outside the checkpoint folder {root}"
        )
    return path


def _check_index_matches(path: Path, folder: Path, tensors: dict[str, TensorInfo]) -> None:
    for name, shard in _load_weight_map(path).items():
        info = tensors.get(name)
        if info is None:
            raise CheckpointError(f"{path}: {name} is mapped to {shard}, which does not hold it")
        if info.file.name != shard:
            raise CheckpointError(
                f"{path}: {name} is mapped to {shard} but stored in {info.file.name}"
            )


def _read_headers(file: Path, fmt: Format) -> Iterator[TensorInfo]:
    if fmt == "safetensors":
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    piece = handle.get_slice(name)
                    dtype = SAFETENSORS_DTYPES.get(piece.get_dtype())
                    if dtype is None:
                        raise CheckpointError(
                            f"{file}: {name} has unsupported dtype {piece.get_dtype()}"
                        )
                    yield TensorInfo(name, tuple(piece.get_shape()), dtype, file)
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: not a valid safetensors file ({exc})") from None
    else:
        for name, tensor in load_bin(file).items():
            yield TensorInfo(name, tuple(tensor.shape), tensor.dtype, file)


def load_bin(file: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, memory-mapped; only tensors are accepted and no code ever runs."""
    try:
        # weights_only: the unpickler accepts tensors and plain containers, never arbitrary objects.
        state: Any = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise CheckpointError(f"{file}: refused, it holds more than tensors ({reason})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for bad files
        raise CheckpointError(
            f"{file}: not a readable PyTorch checkpoint ({_first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{file}: expected a mapping of tensor names to tensors")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TensorReader:
    """Reads tensors by name from a checkpoint's files, keeping each file open while in use."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._stack = ExitStack()
        self._safetensors: dict[Path, Any] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._safetensors.clear()
        self._bins.clear()

    def read(self, name: str) -> torch.Tensor:
        info = self.checkpoint.tensors[name]
        if self.checkpoint.format == "safetensors":
            handle = self._safetensors.get(info.file)
            if handle is None:
                handle = self._stack.enter_context(safe_open(info.file, framework="pt"))
                self._safetensors[info.file] = handle
            try:
                return handle.get_tensor(name)
            except SafetensorError as exc:
                raise CheckpointError(f"{info.file}: cannot read {name} ({exc})") from None
        state = self._bins.get(info.file)
        if state is None:
            state = self._bins[info.file] = load_bin(info.file)
        return state[name]
