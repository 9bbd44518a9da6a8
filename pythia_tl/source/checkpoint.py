"""A checkpoint folder: its config, its weight files, and the tensors they declare.

Four layouts are read: ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, ``pytorch_model.bin``, and sharded ``.bin`` with
``pytorch_model.bin.index.json``. Safetensors is preferred when both are present. Only headers are
read here (for ``.bin``, the pickle, loaded onto the meta device); tensor data is read later, one
tensor at a time, through ``TensorReader``, as views of memory-mapped files whose pages are given
back once used (``pythia_tl.source.reader``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl.errors import CheckpointError
from pythia_tl.formats.safetensors import LENGTH_BYTES, header_length, parse_header
from pythia_tl.formats.torch_bin import is_little_endian, load_bin
from pythia_tl.source.config import NeoXConfig, read_config
from pythia_tl.source.layouts import LAYOUTS, Format, load_weight_map, weight_files_for
from pythia_tl.source.mapped import Span, check_span, contiguous_stride


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what its header says, before any of its data is read.

    ``span`` locates its bytes in ``file``; it is None only for a ``.bin`` file whose storage
    offsets this torch does not report, which is then read through ``torch.load(mmap=True)``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    span: Span | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder whose weight files and headers have been read and checked."""

    folder: Path
    config: NeoXConfig
    format: Format
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]


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
        for info in read_headers(file, fmt):
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
    weight_map = load_weight_map(path)
    shards: list[str] = []
    for shard in weight_map.values():
        if shard not in shards:
            shards.append(shard)
    for shard in shards:
        if not (folder / shard).is_file():
            raise CheckpointError(f"{path}: names shard {shard!r}, which is missing from {folder}")
    return shards


def _inside(path: Path, root: Path, named_by: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise CheckpointError(
            f"{named_by}: {path.name} resolves to {resolved}, outside the checkpoint folder {root}"
        )
    if not resolved.is_file():  # a FIFO would block the reader forever
        raise CheckpointError(f"{named_by}: {path.name} is not a regular file")
    return path


def _check_index_matches(path: Path, folder: Path, tensors: dict[str, TensorInfo]) -> None:
    for name, shard in load_weight_map(path).items():
        info = tensors.get(name)
        if info is None:
            raise CheckpointError(f"{path}: {name} is mapped to {shard}, which does not hold it")
        if info.file.name != shard:
            raise CheckpointError(
                f"{path}: {name} is mapped to {shard} but stored in {info.file.name}"
            )


def read_headers(file: Path, fmt: Format) -> Iterator[TensorInfo]:
    if fmt == "safetensors":
        yield from _safetensors_headers(file)
    else:
        yield from _bin_headers(file)


def _safetensors_headers(file: Path) -> Iterator[TensorInfo]:
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(LENGTH_BYTES)
            # The length is checked against the file and a cap before its bytes are read.
            head = prefix + handle.read(header_length(prefix, size, str(file)))
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    header = parse_header(head, size, str(file))
    for tensor in header.tensors:
        span = Span(
            header.data_start + tensor.begin,
            tensor.end - tensor.begin,
            contiguous_stride(tensor.shape),
        )
        yield TensorInfo(tensor.name, tensor.shape, tensor.dtype, file, span)


def _bin_headers(file: Path) -> Iterator[TensorInfo]:
    """The tensors of a ``.bin`` file, from its pickle alone: loaded onto the meta device, each
    storage reports the offset of its record in the (uncompressed) zip archive."""
    state = load_bin(file, map_location="meta")
    size = file.stat().st_size
    little = is_little_endian(file)
    for name, tensor in state.items():
        offset = getattr(tensor.untyped_storage(), "_checkpoint_offset", None)
        shape, dtype = tuple(tensor.shape), tensor.dtype
        if not little or not isinstance(offset, int):
            # Older torch, or bytes that need swapping: torch.load(mmap=True) reads this file.
            yield TensorInfo(name, shape, dtype, file)
            continue
        span = Span(
            offset,
            tensor.untyped_storage().nbytes(),
            tensor.stride(),
            int(tensor.storage_offset()),
        )
        problem = check_span(span, shape, dtype, size)
        if problem is not None:
            raise CheckpointError(f"{file}: tensor {name}: {problem}")
        yield TensorInfo(name, shape, dtype, file, span)
