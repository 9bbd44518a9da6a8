"""A checkpoint folder: its config, its weight files, and the tensors they declare.

Four layouts are read: ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, ``pytorch_model.bin``, and sharded ``.bin`` with
``pytorch_model.bin.index.json``. Safetensors is preferred when both are present. Only headers are
read here (for ``.bin``, the pickle, loaded onto the meta device); tensor data is read later, one
tensor at a time, by byte ranges into memory of its own (``pythia_tl.source.reader``, or the
Hub's ``stream_reader``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pythia_tl.dtypes import DType, of_torch, tensor_bytes
from pythia_tl.errors import CheckpointError
from pythia_tl.formats.safetensors import LENGTH_BYTES, header_length, parse_header, read_header
from pythia_tl.formats.torch_bin import MAX_PICKLE_BYTES, is_little_endian, load_bin
from pythia_tl.hub.remote import RemoteFile, SparseFile
from pythia_tl.source.config import NeoXConfig, read_config
from pythia_tl.source.layouts import (
    MAX_SHARDS,
    Format,
    expected_weight_files,
    load_weight_map,
    weight_files_for,
)
from pythia_tl.source.spans import Span, check_span, contiguous_stride


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what its header says, before any of its data is read.

    ``span`` locates its bytes in ``file``; it is None only for a ``.bin`` file whose storage
    offsets this torch does not report, which is then read through ``torch.load(mmap=True)``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    file: Path
    span: Span | None = None

    @property
    def span_bytes(self) -> int:
        """The bytes of the file its data takes."""
        if self.span is not None:
            return self.span.nbytes
        return tensor_bytes(self.dtype, self.shape)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder whose weight files and headers have been read and checked.

    ``remote`` holds the weight files that are not on disk but read from the Hub by ranges
    (their ``files`` entry is ``repo@commit/name``, which is how messages name them).
    """

    folder: Path
    config: NeoXConfig
    format: Format
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    remote: dict[Path, RemoteFile] = field(default_factory=dict)

    @property
    def is_remote(self) -> bool:
        return bool(self.remote)


def open_checkpoint(
    folder: Path,
    allowed_root: Path | None = None,
    remote: Mapping[str, RemoteFile] | None = None,
) -> Checkpoint:
    """Read ``folder``'s config and weight headers.

    Every weight file must resolve inside ``allowed_root`` (default: the folder itself), so an
    index cannot make us read files elsewhere on the machine. The weight files named in
    ``remote`` are read from the Hub, headers by byte ranges, even when some are on disk too: a
    conversion streams every file of a revision or none.
    """
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    config = read_config(folder / "config.json")
    root = (allowed_root or folder).resolve()
    remote = remote or {}
    listing = {p.name for p in folder.iterdir()} | set(remote)
    found = weight_files_for(listing)
    if found is None:
        raise CheckpointError(
            f"{folder}: no weights found; expected one of {expected_weight_files()}"
        )
    fmt, (first,) = found
    path = folder / first
    shard_names = _read_index(path, folder, remote) if first.endswith(".index.json") else None
    files: list[Path] = []
    remote_files: dict[Path, RemoteFile] = {}
    for name in shard_names or [first]:
        if name in remote:
            file = Path(remote[name].where)
            remote_files[file] = remote[name]
        else:
            file = _inside(folder / name, root, path)
        files.append(file)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for info in read_headers(remote_files.get(file, file), fmt):
            if info.name in tensors:
                raise CheckpointError(
                    f"{file}: tensor {info.name} also stored in {tensors[info.name].file.name}"
                )
            tensors[info.name] = info
    if shard_names is not None:
        _check_index_matches(path, folder, tensors)
    return Checkpoint(folder, config, fmt, tuple(files), tensors, remote_files)


def _read_index(path: Path, folder: Path, remote: Mapping[str, RemoteFile]) -> list[str]:
    """The shard file names of an index file, in first-use order."""
    shards = list(dict.fromkeys(load_weight_map(path).values()))
    if len(shards) > MAX_SHARDS:
        raise CheckpointError(
            f"{path}: names {len(shards)} shards, more than the {MAX_SHARDS} allowed"
        )
    for shard in shards:
        if not (folder / shard).is_file() and shard not in remote:
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


def read_headers(file: Path | RemoteFile, fmt: Format) -> Iterator[TensorInfo]:
    """The tensors a weight file declares (a remote file's by byte ranges)."""
    if fmt == "safetensors":
        yield from _safetensors_headers(file)
    else:
        yield from _bin_headers(file)


def _safetensors_headers(file: Path | RemoteFile) -> Iterator[TensorInfo]:
    if isinstance(file, RemoteFile):
        where = Path(file.where)
        size = file.size
        prefix = file.read(0, LENGTH_BYTES)
        # The length is checked against the file and a cap before its bytes are read.
        length = header_length(prefix, size, file.where)
        header = parse_header(
            prefix + file.read(LENGTH_BYTES, LENGTH_BYTES + length), size, file.where
        )
    else:
        where = file
        try:
            header = read_header(file)
        except OSError as exc:
            raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    for tensor in header.tensors:
        span = Span(
            header.data_start + tensor.begin,
            tensor.end - tensor.begin,
            contiguous_stride(tensor.shape),
        )
        yield TensorInfo(tensor.name, tensor.shape, tensor.dtype, where, span)


def _bin_headers(file: Path | RemoteFile) -> Iterator[TensorInfo]:
    """The tensors of a ``.bin`` file, from its pickle alone: loaded onto the meta device, each
    storage reports the offset of its record in the (uncompressed) zip archive."""
    if isinstance(file, RemoteFile):
        source: Path | SparseFile = bin_index(file)
        where, size = Path(file.where), file.size
    else:
        source, where, size = file, file, file.stat().st_size
    state = load_bin(source, map_location="meta", where=where, size=size)
    little = is_little_endian(source, where=where)
    for name, tensor in state.items():
        offset = getattr(tensor.untyped_storage(), "_checkpoint_offset", None)
        shape, dtype = tuple(tensor.shape), of_torch(tensor.dtype)
        if dtype is None:
            raise CheckpointError(
                f"{where}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
                "which pythia-tl does not read"
            )
        if not little or not isinstance(offset, int):
            # Older torch, or bytes that need swapping: torch.load(mmap=True) reads this file.
            if isinstance(file, RemoteFile):
                raise CheckpointError(
                    f"{where}: tensor {name}: its storage offset is unknown (big-endian, or "
                    "written by a torch too old); download the revision to convert it"
                )
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
            raise CheckpointError(f"{where}: tensor {name}: {problem}")
        yield TensorInfo(name, shape, dtype, where, span)


# Bytes read at a remote .bin file's end: its end-of-central-directory record and, for Pythia's
# files (a few hundred records), the whole central directory.
_TAIL_BYTES = 1 << 16
# Far more records than a checkpoint's archive holds (one per tensor, plus a few).
_MAX_RECORDS = 1 << 16
# A local file header: 30 bytes, the name, and an extra field (torch pads data to 64 bytes).
_LOCAL_HEADER_BYTES = 30 + 256 + 128


def bin_index(file: RemoteFile) -> SparseFile:
    """A remote ``.bin`` file with the bytes ``torch.load`` reads for its pickle prefetched: the
    central directory, the pickle record, and every record's local header (which gives the
    offset of its data), each fetched once, several at a time."""
    sparse = SparseFile(file)
    tail = max(0, file.size - _TAIL_BYTES)
    sparse.prefetch([(tail, file.size)])
    try:
        with zipfile.ZipFile(sparse) as archive:
            records = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{file.where}: not a readable PyTorch checkpoint ({exc})") from None
    if len(records) > _MAX_RECORDS:
        raise CheckpointError(
            f"{file.where}: its archive lists {len(records)} records, more than the "
            f"{_MAX_RECORDS} allowed"
        )
    spans = []
    for record in records:
        end = record.header_offset + _LOCAL_HEADER_BYTES
        if record.filename.endswith("/data.pkl"):
            if record.compress_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"{file.where}: its pickle holds {record.compress_size} bytes, more than the "
                    f"{MAX_PICKLE_BYTES} allowed"
                )
            end += record.compress_size
        spans.append((record.header_offset, min(end, file.size)))
    sparse.prefetch(spans)
    return sparse
