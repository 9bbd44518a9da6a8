"""A raw pythia-tl file's source tensors, rebuilt by running the conversion table backwards.

One home for ``export``'s folder and ``load``'s in-memory transformers model: each rule's
outputs are read from the file by byte range (one tensor at a time) and ``Rule.invert`` gives
back its source tensor, for a raw file bit for bit the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pythia_tl.errors import OutputFileError
from pythia_tl.formats.safetensors import TensorEntry
from pythia_tl.mapping.pythia import PYTHIA_TO_TL
from pythia_tl.mapping.rules import Rule, RuleError, expand
from pythia_tl.output.metadata import ConversionRecord, OutputFile

if TYPE_CHECKING:
    import torch


class RebuiltSource:
    """The source tensors of ``info`` (a raw, whole file): ``entries`` to plan a file with, and
    ``tensors()`` to stream them in the same order."""

    def __init__(self, info: OutputFile, record: ConversionRecord) -> None:
        from pythia_tl.output.file_tensors import FileTensors

        self._info = info
        self._dims = record.config.dims()
        rules = expand(PYTHIA_TO_TL, record.config.n_layers)
        # One tensor in memory at a time, each read by its byte range (see FileTensors).
        self._file = FileTensors(info.path, info.tensors)
        for rule in rules:
            if rule.source is None:  # unembed.b_U: zeros in a raw file, or GPT-NeoX cannot hold it
                self._invert(rule)
        self._rules = [rule for rule in rules if rule.source is not None]
        self.entries = [
            TensorEntry(str(rule.source), record.dtype, rule.source_shape(self._dims))
            for rule in self._rules
        ]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for rule in self._rules:
            yield str(rule.source), self._invert(rule)

    def _invert(self, rule: Rule) -> torch.Tensor:
        try:
            return rule.invert([self._file[key] for key in rule.outputs], self._dims)
        except RuleError as exc:
            raise OutputFileError(f"{self._info.path}: {exc}") from None
