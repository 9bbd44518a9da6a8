"""Which output tensors a conversion writes: globs over TransformerLens keys and a layer list.

``tensors`` is a comma list of globs (``embed.W_E``, ``blocks.*.attn.W_Q``, ``unembed.*``);
``layers`` a comma list of layers and inclusive ranges (``0-3,10``), which keeps the blocks of
those layers only. Given both, a key must satisfy both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pythia_tl.errors import Param, UsageError
from pythia_tl.source.config import MAX_LAYERS

# A per-layer TransformerLens key; group 1 is its layer.
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")
# A layer or a range A-B (A:B too, as ``--steps`` once spelled its ranges).
_LAYER_ITEM = re.compile(r"\s*(\d{1,6})\s*(?:[-:]\s*(\d{1,6})\s*)?")
# Far more than any list a user types; a file's recorded selection is parsed too, so its work is
# bounded (as is each range, by MAX_LAYERS).
MAX_SPEC_CHARS = 4096


@dataclass(frozen=True)
class Selection:
    """A parsed ``tensors``/``layers`` choice; neither given means every tensor."""

    tensors: tuple[str, ...] = ()
    layers: frozenset[int] | None = None
    layers_text: str = ""

    @property
    def is_all(self) -> bool:
        return not self.tensors and self.layers is None

    def keys(self, available: Sequence[str]) -> list[str]:
        """The keys of ``available`` (in their order) this selection keeps; refuses a glob or a
        layer that keeps nothing."""
        for glob in self.tensors:
            if not any(fnmatchcase(key, glob) for key in available):
                raise UsageError(Param("tensors"), f": {glob!r} matches no tensor of the output")
        present = {int(m[1]) for key in available if (m := BLOCK_KEY.match(key))}
        for layer in sorted((self.layers or frozenset()) - present):
            raise UsageError(
                Param("layers"),
                f": the model has no layer {layer} (layers 0-{max(present, default=0)})",
            )
        kept = [key for key in available if self._keeps(key)]
        if not kept:
            raise UsageError(Param("tensors"), " and ", Param("layers"), " together keep nothing")
        return kept

    def _keeps(self, key: str) -> bool:
        if self.tensors and not any(fnmatchcase(key, glob) for glob in self.tensors):
            return False
        if self.layers is not None:
            block = BLOCK_KEY.match(key)
            return block is not None and int(block[1]) in self.layers
        return True

    def to_json(self) -> dict[str, Any] | None:
        """What the output's metadata records (None: every tensor)."""
        if self.is_all:
            return None
        return {"tensors": list(self.tensors), "layers": self.layers_text or None}


def parse_selection(tensors: str | None, layers: str | None) -> Selection:
    """Parse the ``tensors`` globs and the ``layers`` spec (None: not given)."""
    for name, spec in (("tensors", tensors), ("layers", layers)):
        if spec is not None and len(spec) > MAX_SPEC_CHARS:
            raise UsageError(
                Param(name), f": {len(spec)} characters, more than the {MAX_SPEC_CHARS} allowed"
            )
    globs: tuple[str, ...] = ()
    if tensors is not None:
        globs = tuple(glob.strip() for glob in tensors.split(","))
        if not all(globs):
            raise UsageError(
                Param("tensors"), f" {tensors!r}: empty glob; expected e.g. embed.W_E,unembed.*"
            )
    chosen: frozenset[int] | None = None
    if layers is not None:
        numbers: set[int] = set()
        for item in layers.split(","):
            match = _LAYER_ITEM.fullmatch(item)
            if match is None:
                raise UsageError(
                    Param("layers"), f" {layers!r}: {item.strip()!r} is not a layer or a range A-B"
                )
            first, last = int(match[1]), int(match[2] or match[1])
            if last < first:
                raise UsageError(
                    Param("layers"), f" {layers!r}: range {item.strip()!r} ends before it starts"
                )
            if last >= MAX_LAYERS:
                raise UsageError(
                    Param("layers"), f" {layers!r}: layer {last} is beyond the {MAX_LAYERS} allowed"
                )
            numbers.update(range(first, last + 1))
        chosen = frozenset(numbers)
    return Selection(globs, chosen, layers.strip() if layers is not None else "")


EVERY_TENSOR = Selection()
