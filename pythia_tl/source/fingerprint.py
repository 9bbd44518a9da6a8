"""The files a checkpoint is read from, and a record of them that tells when one has changed.

A conversion takes the record before it reads anything and checks it just before publishing its
output: a source truncated, rewritten or replaced meanwhile fails the conversion rather than
leave an output made partly from each version.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pythia_tl.errors import CheckpointError
from pythia_tl.source.checkpoint import Checkpoint
from pythia_tl.source.layouts import LAYOUTS


def read_by(checkpoint: Checkpoint) -> list[Path]:
    """Every file on disk ``checkpoint`` is read from: config.json, an index file, the weights
    (those read from the Hub by ranges are checked by their sha256 instead)."""
    folder = checkpoint.folder
    indexes = [folder / index for _, _, index in LAYOUTS if (folder / index).is_file()]
    local = [file for file in checkpoint.files if file not in checkpoint.remote]
    return [folder / "config.json", *indexes, *local]


def _identity(path: Path) -> tuple[int, int, int, int]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class SourceFingerprint:
    """Each file's device, inode, size and modification time, taken when made."""

    def __init__(self, files: Iterable[Path]) -> None:
        self._files = tuple(files)
        try:
            self._taken = [_identity(path) for path in self._files]
        except OSError as exc:
            raise CheckpointError(f"{exc.filename}: cannot examine ({exc.strerror})") from None

    def check(self) -> None:
        """CheckpointError naming the first file that is not as it was."""
        for path, taken in zip(self._files, self._taken, strict=True):
            try:
                now = _identity(path)
            except OSError:
                now = None
            if now != taken:
                raise CheckpointError(
                    f"{path}: changed while it was being converted (truncated, rewritten or "
                    "replaced); nothing was written"
                )
