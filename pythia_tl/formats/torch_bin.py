"""PyTorch's ``.bin`` checkpoints (zip archives of uncompressed records around one pickle), loaded
without running code: only tensors and plain containers are accepted."""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from pathlib import Path
from typing import IO, Any, cast

import torch

from pythia_tl.errors import CheckpointError

# A path, or a seekable binary file object (such as a remote file read by ranges).
Archive = Path | IO[bytes] | io.RawIOBase


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


def load_bin(
    file: Archive, map_location: str = "cpu", where: Path | None = None
) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, memory-mapped (or on the meta device: shapes only); only tensors
    are accepted and no code ever runs. ``where`` names a file object in messages."""
    where = where or Path(str(file))
    if not isinstance(file, Path):
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
            f"{where}: not a readable PyTorch checkpoint ({_first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{where}: expected a mapping of tensor names to tensors")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
