"""Reading a checkpoint's tensors by name, one at a time, each into memory of its own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pythia_tl.errors import CheckpointError
from pythia_tl.formats.torch_bin import load_bin
from pythia_tl.source.weight_file import WeightFile

if TYPE_CHECKING:
    from pythia_tl.source.checkpoint import Checkpoint


class TensorReader:
    """Reads tensors by name, each file opened while in use (see ``WeightFile``).

    A tensor returned by ``read`` should be converted into new tensors, never changed in place
    (a ``.bin`` file torch maps itself gives views of its map). ``release`` is kept for readers
    that map files; reading a tensor again afterwards still works.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._files: dict[Path, WeightFile] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        self._closed = False

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for file in self._files.values():
            file.close()
        self._files.clear()
        self._bins.clear()

    def read(self, name: str) -> torch.Tensor:
        info = self.checkpoint.tensors[name]
        if self._closed:
            raise CheckpointError(f"{info.file}: {name} read after the reader was closed")
        if info.file in self.checkpoint.remote:
            raise CheckpointError(f"{info.file}: on the Hub, not on disk: stream it (StreamReader)")
        if info.span is None:
            state = self._bins.get(info.file)
            if state is None:
                state = self._bins[info.file] = load_bin(info.file)
            return state[name]
        return self._opened(info.file).tensor(info.span, info.shape, info.dtype)

    def release(self, name: str) -> None:
        """Done with ``name``'s data: its buffer is freed with the last tensor made from it."""

    def _opened(self, file: Path) -> WeightFile:
        opened = self._files.get(file)
        if opened is None:
            opened = self._files[file] = WeightFile(file)
        return opened
