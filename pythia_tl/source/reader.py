"""Reading a checkpoint's tensors by name, one at a time, as views of memory-mapped files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pythia_tl.errors import CheckpointError
from pythia_tl.formats.torch_bin import load_bin
from pythia_tl.source.mapped import MappedFile

if TYPE_CHECKING:
    from pythia_tl.source.checkpoint import Checkpoint


class TensorReader:
    """Reads tensors by name as views of memory-mapped files, each file mapped while in use.

    A tensor returned by ``read`` is read-only data shared with the page cache: convert it into
    new tensors, never in place. ``release`` gives its pages back once it has been used; reading
    it again afterwards still works (the pages are faulted in again).
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._maps: dict[Path, MappedFile] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        self._closed = False

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()
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
        return self._mapped(info.file).tensor(info.span, info.shape, info.dtype)

    def release(self, name: str) -> None:
        """Give back the pages of ``name``'s data (a no-op for files torch maps itself)."""
        info = self.checkpoint.tensors[name]
        mapped = self._maps.get(info.file)
        if info.span is not None and mapped is not None:
            mapped.release(info.span.offset, info.span.offset + info.span.nbytes)

    def _mapped(self, file: Path) -> MappedFile:
        mapped = self._maps.get(file)
        if mapped is None:
            mapped = self._maps[file] = MappedFile(file)
        return mapped
