"""Reading a file's tensors one at a time, with memory bounded by the tensor read.

safetensors' ``safe_open`` keeps the file memory-mapped while the handle is open, and every page
read stays in the process's resident memory until it closes; a handle held across a whole file
would end up holding all of it. Each read here opens and closes its own handle (parsing the
header again costs little next to reading the tensor).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open


def read_tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(path, framework="pt") as handle:
        tensor: torch.Tensor = handle.get_tensor(key)
    return tensor


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
