"""PyTorch's ``.bin`` checkpoints (zip archives of uncompressed records around one pickle), loaded
without running code: only tensors and plain containers are accepted."""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pythia_tl.errors import CheckpointError
from pythia_tl.text import first_line

if TYPE_CHECKING:
    import torch

# A path, or a seekable binary file object (such as a remote file read by ranges).
Archive = Path | IO[bytes] | io.RawIOBase
# A Pythia checkpoint's pickle is a few tens of kB; torch reads it whole into memory.
MAX_PICKLE_BYTES = 64 << 20
_LOCAL_HEADER_BYTES = 30


def is_little_endian(file: Archive, where: Path | None = None) -> bool:
    """Whether a torch zip archive stores little-endian values (archives without a ``byteorder``
    record predate big-endian support and are little-endian). ``where`` names a file object."""
    where = where or Path(str(file))
    try:
        with zipfile.ZipFile(file) as archive:
            record = next(
                (i for i in archive.infolist() if i.filename.endswith("/byteorder")), None
            )
            if record is not None and record.file_size > 16:
                raise CheckpointError(
                    f"{where}: its byteorder record holds {record.file_size} bytes"
                )
            order = archive.read(record).decode("ascii", "replace") if record else "little"
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{where}: not a readable PyTorch checkpoint ({exc})") from None
    return order.strip() == "little" == sys.byteorder


def check_archive(file: Archive, size: int, where: Path) -> None:
    """CheckpointError unless every record of the zip archive is stored uncompressed (as torch
    writes them) and lies within the file's ``size`` bytes, and the pickle is of a sane size:
    checked from the central directory before torch inflates or reads anything, so a small file
    cannot make it allocate gigabytes."""
    try:
        with zipfile.ZipFile(file) as archive:
            records = archive.infolist()
        with open(file, "rb") if isinstance(file, Path) else nullcontext(file) as raw:
            for record in records:
                _check_record(where, record, raw, size)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{where}: not a readable PyTorch checkpoint ({exc})") from None


def _check_record(
    where: Path, record: zipfile.ZipInfo, raw: IO[bytes] | io.RawIOBase, size: int
) -> None:
    name = record.filename
    if record.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{where}: record {name!r} is compressed; torch stores records as is")
    if record.compress_size != record.file_size:
        raise CheckpointError(
            f"{where}: record {name!r} declares {record.file_size} bytes but stores "
            f"{record.compress_size}"
        )
    if name.endswith(".pkl") and record.file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{where}: its pickle {name!r} holds {record.file_size} bytes, more than the "
            f"{MAX_PICKLE_BYTES} allowed"
        )
    raw.seek(record.header_offset)
    local = raw.read(_LOCAL_HEADER_BYTES) or b""
    if len(local) < _LOCAL_HEADER_BYTES or local[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{where}: record {name!r} has no local header where declared")
    name_length = int.from_bytes(local[26:28], "little")
    extra_length = int.from_bytes(local[28:30], "little")
    end = record.header_offset + _LOCAL_HEADER_BYTES + name_length + extra_length
    if end + record.compress_size > size:
        raise CheckpointError(
            f"{where}: record {name!r} declares {record.compress_size} bytes at byte {end}, "
            f"past the file's {size} bytes"
        )


def load_bin(
    file: Archive, map_location: str = "cpu", where: Path | None = None, size: int | None = None
) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, memory-mapped (or on the meta device: shapes only); only tensors
    are accepted and no code ever runs. A file object needs ``size`` (and ``where`` names it in
    messages)."""
    import torch  # only a .bin source needs its unpickler

    where = where or Path(str(file))
    if isinstance(file, Path):
        if zipfile.is_zipfile(file):  # legacy (non-zip) files hold no compressed records
            check_archive(file, file.stat().st_size, where)
    else:
        check_archive(file, size if size is not None else 0, where)
        file.seek(0)
    try:
        # weights_only: the unpickler accepts tensors and plain containers, never arbitrary objects.
        state: Any = torch.load(
            cast(IO[bytes], file) if not isinstance(file, Path) else file,
            map_location=map_location,
            weights_only=True,
            mmap=map_location == "cpu" and isinstance(file, Path),
        )
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise CheckpointError(f"{where}: refused, it holds more than tensors ({reason})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for bad files
        raise CheckpointError(
            f"{where}: not a readable PyTorch checkpoint ({first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{where}: expected a mapping of tensor names to tensors")
    return state
