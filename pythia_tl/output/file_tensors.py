"""Reading a file's tensors one at a time, with memory bounded by the tensor read.

Each tensor is read with ``preadv`` into memory of its own, at the byte range the header gives
(``pythia_tl.source.weight_file``), never through a memory map: safetensors' ``safe_open`` maps
the whole file, keeps every page read resident until it closes, and a file that shrinks while
mapped (replaced or truncated during ``verify``) would kill the process with SIGBUS. The header is
parsed again for each read (it is small next to a tensor), so a file that changed between two
reads is read by its current header or refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from pythia_tl.errors import CheckpointError, OutputFileError
from pythia_tl.formats.safetensors import read_header
from pythia_tl.source.spans import Span, contiguous_stride
from pythia_tl.source.weight_file import WeightFile


def read_tensor(path: Path, key: str) -> torch.Tensor:
    """Tensor ``key`` of the safetensors file ``path``; OutputFileError when it cannot be read."""
    try:
        header = read_header(path)
        entry = next((t for t in header.tensors if t.name == key), None)
        if entry is None:
            raise OutputFileError(f"{path}: holds no tensor {key}")
        span = Span(
            header.data_start + entry.begin, entry.end - entry.begin, contiguous_stride(entry.shape)
        )
        opened = WeightFile(path)
        try:
            return opened.tensor(span, entry.shape, entry.dtype)
        finally:
            opened.close()
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except CheckpointError as exc:
        raise OutputFileError(*exc.parts) from None


class FileTensors(Mapping[str, torch.Tensor]):
    """A file's tensors by name, each read from disk when it is looked up."""

    def __init__(self, path: Path, keys: Iterable[str]) -> None:
        self._path = path
        self._keys = frozenset(keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return read_tensor(self._path, key)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)
