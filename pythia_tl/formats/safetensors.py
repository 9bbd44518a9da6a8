"""The safetensors header: parsed without trusting it, and encoded from planned shapes.

safetensors' own reader (``safe_open``) keeps the whole file memory-mapped while it is open, so
every page it has touched counts in the process's resident memory until the handle closes, and
it has no call that reads one tensor into a caller's buffer or lets go of pages already read. To
convert a checkpoint in memory bounded by its largest tensor, the reader maps the file itself
and needs each tensor's byte range, hence this parser.

The header is untrusted input: everything is checked before anything is sized from it. The
length must fit the file and a cap; the JSON must be UTF-8, an object, without repeated keys;
every entry must name a known dtype, a shape of non-negative integers and two non-negative
integer offsets whose span is exactly the shape's size; and the spans must tile the data area
from its first byte to its last, without overlaps or gaps.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pythia_tl.dtypes import BY_SAFETENSORS, DType, tensor_bytes
from pythia_tl.errors import CheckpointError

LENGTH_BYTES = 8
# Far more than any GPT-NeoX header needs (pythia-12b's is ~100 kB); a cap below safetensors' own
# 100 MB keeps a hostile length from making us allocate and parse a huge "header".
MAX_HEADER_BYTES = 16 * 2**20
METADATA_KEY = "__metadata__"
# Far more dimensions than any weight has; bounds the work of checking a shape's byte size.
MAX_DIMS = 64


@dataclass(frozen=True)
class HeaderTensor:
    """One tensor of a header: its dtype, shape, and byte range relative to the data area."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    data_start: int
    tensors: tuple[HeaderTensor, ...]
    metadata: dict[str, str]


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to be written: its name, dtype and shape."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.dtype, self.shape)


def encode_header(
    entries: Sequence[TensorEntry], metadata: Mapping[str, str], size: int = 0
) -> bytes:
    """The JSON header of ``entries`` stored back to back, padded with spaces to ``size`` (at
    least to a multiple of 8)."""
    header: dict[str, object] = {METADATA_KEY: dict(metadata)}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype.safetensors,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    padded = max(size, -(-len(raw) // 8) * 8)
    if len(raw) > padded:
        raise ValueError(f"header of {len(raw)} bytes does not fit the {size} reserved")
    return raw + b" " * (padded - len(raw))


def header_length(prefix: bytes, file_size: int, where: str) -> int:
    """The JSON header's length, read from the file's first 8 bytes and checked before use."""
    if file_size < LENGTH_BYTES or len(prefix) < LENGTH_BYTES:
        raise _invalid(where, f"{file_size} bytes is too short for a safetensors file")
    length = int.from_bytes(prefix[:LENGTH_BYTES], "little")
    if length > MAX_HEADER_BYTES:
        raise _invalid(
            where, f"header length {length} exceeds the {MAX_HEADER_BYTES} bytes allowed"
        )
    if length > file_size - LENGTH_BYTES:
        raise _invalid(where, f"header length {length} exceeds the file's {file_size} bytes")
    return length


def read_header(path: Path) -> SafetensorsHeader:
    """The checked header of the local safetensors file ``path`` (OSError when unreadable)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(LENGTH_BYTES)
        # The length is checked against the file and a cap before its bytes are read.
        head = prefix + handle.read(header_length(prefix, size, str(path)))
    return parse_header(head, size, str(path))


def parse_header(head: bytes, file_size: int, where: str) -> SafetensorsHeader:
    """Parse and check the header at the start of a safetensors file of ``file_size`` bytes.

    ``head`` holds the file's first bytes: the 8-byte length and at least that many bytes after
    it. ``where`` (the file's name) starts every error message. Pure: reads nothing else.
    """
    length = header_length(head, file_size, where)
    raw = head[LENGTH_BYTES : LENGTH_BYTES + length]
    if len(raw) < length:
        raise _invalid(where, f"header cut short ({len(raw)} of {length} bytes)")
    data_size = file_size - LENGTH_BYTES - length
    document = _load_json(raw, where)
    metadata = _metadata(document.pop(METADATA_KEY, {}), where)
    tensors = tuple(_tensor(name, entry, where) for name, entry in document.items())
    _check_tiling(tensors, data_size, where)
    return SafetensorsHeader(LENGTH_BYTES + length, tensors, metadata)


def _load_json(raw: bytes, where: str) -> dict[str, object]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(where, f"header is not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
    except _RepeatedKey as exc:
        raise _invalid(where, f"header names {exc.args[0]!r} more than once") from None
    except json.JSONDecodeError as exc:
        raise _invalid(where, f"header is not valid JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise _invalid(where, "header is not valid JSON (nested too deeply)") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise _invalid(where, "header is not valid JSON (a number is too long)") from None
    if not isinstance(document, dict):
        raise _invalid(where, f"header is a JSON {type(document).__name__}, expected an object")
    return document


def _invalid(where: str, detail: str) -> CheckpointError:
    return CheckpointError(f"{where}: not a valid safetensors file ({detail})")


class _RepeatedKey(ValueError):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise _RepeatedKey(key)
        document[key] = value
    return document


def _metadata(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(where, f"{METADATA_KEY} must map strings to strings")
    return value


def _tensor(name: str, entry: object, where: str) -> HeaderTensor:
    name_at = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _invalid(where, f"{name_at}: expected an object, got a JSON {type(entry).__name__}")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise _invalid(where, f"{name_at}: missing {', '.join(missing)}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    dtype = BY_SAFETENSORS.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise _invalid(
            where,
            f"{name_at}: unsupported dtype {code!r}; expected one of {', '.join(BY_SAFETENSORS)}",
        )
    if not isinstance(shape, list) or not all(_is_count(size) for size in shape):
        raise _invalid(where, f"{name_at}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS:  # bounds the size computation below, whatever the sizes
        raise _invalid(where, f"{name_at}: shape has {len(shape)} dimensions, at most {MAX_DIMS}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
    ):
        raise _invalid(
            where, f"{name_at}: data_offsets {offsets!r} is not a pair of non-negative integers"
        )
    begin, end = offsets
    if begin > end:
        raise _invalid(where, f"{name_at}: data_offsets [{begin}, {end}] end before they begin")
    needed = math.prod(shape) * dtype.itemsize
    if end - begin != needed:
        raise _invalid(
            where,
            f"{name_at}: shape {shape} of {code} takes {needed} bytes, but data_offsets "
            f"[{begin}, {end}] span {end - begin}",
        )
    return HeaderTensor(name, dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    # bool is an int in Python, but `true` is not a size.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tiling(tensors: tuple[HeaderTensor, ...], data_size: int, where: str) -> None:
    """The byte ranges must cover the data area exactly: no overlaps, no gaps, nothing beyond."""
    position, previous = 0, None
    for tensor in sorted(tensors, key=lambda t: (t.begin, t.end)):
        name_at = f"tensor {tensor.name!r}"
        if tensor.end > data_size:
            raise _invalid(
                where,
                f"{name_at}: data_offsets end at {tensor.end}, past the {data_size} bytes of data",
            )
        if tensor.begin < position:
            assert previous is not None
            raise _invalid(
                where,
                f"{name_at}: bytes [{tensor.begin}, {tensor.end}) overlap tensor {previous.name!r} "
                f"[{previous.begin}, {previous.end})",
            )
        if tensor.begin > position:
            raise _invalid(
                where,
                f"{name_at}: starts at byte {tensor.begin}, leaving a gap after byte {position}",
            )
        position, previous = tensor.end, tensor
    if position != data_size:
        raise _invalid(
            where,
            f"the tensors end at byte {position} of the data, but the file holds "
            f"{data_size} bytes of data",
        )
