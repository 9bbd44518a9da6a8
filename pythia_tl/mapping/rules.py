"""Conversion rules: one source tensor, one einops pattern, one or several named outputs.

A rule reads ``source`` (or the first of its ``aliases`` a checkpoint has), rearranges it with
``pattern`` and yields its outputs, as llama.cpp's ``modify_tensors`` yields ``(name, tensor)``
pairs. The pattern's axis names are the model's dimensions (``n_heads``, ``d_model``, ...), whose
sizes come from config.json: planning reads the shapes they imply from the pattern alone (no
tensor library), and einops checks every tensor against them as it rearranges it. A rule with
several outputs has ``part`` as the first axis of its result: output ``i`` is index ``i`` of it.
A pattern with nothing on its left (``-> d_vocab``) reads no source: its output is zeros.

Keys are templates while they contain ``{l}`` (the layer); ``expand`` writes them out per layer.
Running a rule backwards (``invert``) gives back the source tensor bit for bit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import einops

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]
PART = "part"
_AXIS = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
# One side of a pattern: axis names, and groups of them in parentheses (not nested).
_TOKEN = re.compile(r"\(|\)|[A-Za-z_][A-Za-z_0-9]*|\S")


class RuleError(ValueError):
    """A rule does not fit a shape, or its pattern is not well formed."""


@dataclass(frozen=True)
class Rule:
    """``source --pattern--> outputs``."""

    source: str | None
    pattern: str
    outputs: tuple[str, ...]
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        left, _, right = self.pattern.partition("->")
        if "->" not in self.pattern or (self.source is None) != (not left.strip()):
            raise RuleError(f"rule for {self.outputs}: pattern {self.pattern!r} does not fit")
        if len(self.outputs) > 1 and right.split()[:1] != [PART]:
            raise RuleError(f"rule for {self.outputs}: several outputs need '{PART}' first")
        left_axes = [axis for group in _groups(left, self.pattern) for axis in group]
        right_axes = [axis for group in _groups(right, self.pattern) for axis in group]
        for axes in (left_axes, right_axes):
            if len(set(axes)) != len(axes):
                raise RuleError(f"pattern {self.pattern!r} names an axis twice on one side")
        if self.source is not None and set(left_axes) != set(right_axes):
            raise RuleError(f"pattern {self.pattern!r} must name the same axes on both sides")

    @property
    def per_layer(self) -> bool:
        return any("{l}" in key for key in (*self.outputs, self.source or ""))

    @property
    def source_names(self) -> tuple[str, ...]:
        """Every spelling of the source key, the canonical one first."""
        return () if self.source is None else (self.source, *self.aliases)

    @property
    def source_axes(self) -> str:
        return self.pattern.partition("->")[0].strip()

    @property
    def output_axes(self) -> tuple[str, ...]:
        """The axes of each output (without ``part``)."""
        axes = self.pattern.partition("->")[2].split()
        return tuple(axes[1:] if len(self.outputs) > 1 else axes)

    @property
    def is_identity(self) -> bool:
        return self.source_axes == self.pattern.partition("->")[2].strip()

    def at_layer(self, layer: int) -> Rule:
        def fill(key: str) -> str:
            return key.replace("{l}", str(layer))

        return replace(
            self,
            source=None if self.source is None else fill(self.source),
            outputs=tuple(fill(key) for key in self.outputs),
            aliases=tuple(fill(alias) for alias in self.aliases),
        )

    def sizes(self, dims: Mapping[str, int]) -> dict[str, int]:
        """The size of every axis the pattern names (``part``: the number of outputs)."""
        known = {**dims, PART: len(self.outputs)}
        names = dict.fromkeys(_AXIS.findall(self.pattern))
        missing = [name for name in names if name not in known]
        if missing:
            raise RuleError(f"pattern {self.pattern!r} names unknown dimension {missing[0]!r}")
        return {name: known[name] for name in names}

    def output_shape(self, dims: Mapping[str, int]) -> Shape:
        """The shape of each output: each axis, or group of axes, of the pattern's right side
        (``part`` aside)."""
        groups = _groups(self.pattern.partition("->")[2], self.pattern)
        return self._shape(groups[1:] if len(self.outputs) > 1 else groups, dims)

    def source_shape(self, dims: Mapping[str, int]) -> Shape:
        """The shape ``dims`` give the source: each axis, or group of axes, of the pattern's
        left side."""
        return self._shape(_groups(self.source_axes, self.pattern), dims)

    def _shape(self, groups: list[tuple[str, ...]], dims: Mapping[str, int]) -> Shape:
        sizes = self.sizes(dims)
        return tuple(math.prod(sizes[axis] for axis in group) for group in groups)

    def apply(self, tensor: torch.Tensor, dims: Mapping[str, int]) -> tuple[torch.Tensor, ...]:
        """The outputs of ``tensor`` (views of it where einops can make them)."""
        result = self._forward(tensor, dims)
        return tuple(result.unbind(0)) if len(self.outputs) > 1 else (result,)

    def zeros(self, dims: Mapping[str, int], dtype: torch.dtype) -> torch.Tensor:
        """The output of a rule with no source."""
        import torch

        return torch.zeros(self.output_shape(dims), dtype=dtype)

    def invert(self, outputs: Sequence[torch.Tensor], dims: Mapping[str, int]) -> torch.Tensor:
        """The source tensor these outputs came from (a rule with no source: refused unless the
        outputs are the zeros it makes)."""
        import torch

        joined = torch.stack(list(outputs)) if len(self.outputs) > 1 else outputs[0]
        if self.source is None:
            if bool(joined.count_nonzero()):
                raise RuleError(
                    f"{self.outputs[0]} holds non-zero values, which the source layout cannot hold"
                )
            return joined
        return self._inverse(joined, dims).contiguous()

    def _forward(self, tensor: torch.Tensor, dims: Mapping[str, int]) -> torch.Tensor:
        if self.source is None:
            return tensor
        return _rearrange(tensor, self.pattern, self.sizes(dims))

    def _inverse(self, tensor: torch.Tensor, dims: Mapping[str, int]) -> torch.Tensor:
        left, _, right = self.pattern.partition("->")
        return _rearrange(tensor, f"{right.strip()} -> {left.strip()}", self.sizes(dims))


def expand(table: Sequence[Rule], n_layers: int) -> list[Rule]:
    """Concrete rules in table order, the per-layer rules repeated layer by layer where the first
    of them stands."""
    layer_rules = [rule for rule in table if rule.per_layer]
    concrete: list[Rule] = []
    for rule in table:
        if not rule.per_layer:
            concrete.append(rule)
        elif rule is layer_rules[0]:
            concrete.extend(r.at_layer(i) for i in range(n_layers) for r in layer_rules)
    return concrete


def invert(
    rules: Iterable[Rule], tensors: Mapping[str, torch.Tensor], dims: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """The source tensors of converted ``tensors``, by canonical source name: every rule run
    backwards. Rules with no source give nothing back (their outputs must be zeros)."""
    sources: dict[str, torch.Tensor] = {}
    for rule in rules:
        source = rule.invert([tensors[key] for key in rule.outputs], dims)
        if rule.source is not None:
            sources[rule.source] = source
    return sources


def _groups(side: str, pattern: str) -> list[tuple[str, ...]]:
    # einops gives shapes only by rearranging a tensor, and planning imports no tensor library:
    # the axes are read here (tests check every table's shapes against einops itself).
    groups: list[tuple[str, ...]] = []
    group: list[str] | None = None
    for token in _TOKEN.findall(side):
        if token == "(" and group is None:
            group = []
        elif token == ")" and group is not None:
            groups.append(tuple(group))
            group = None
        elif _AXIS.fullmatch(token):
            if group is None:
                groups.append((token,))
            else:
                group.append(token)
        else:
            raise RuleError(f"pattern {pattern!r}: unexpected {token!r}")
    if group is not None:
        raise RuleError(f"pattern {pattern!r}: unclosed '('")
    return groups


def _rearrange(tensor: torch.Tensor, pattern: str, sizes: Mapping[str, int]) -> torch.Tensor:
    try:
        return einops.rearrange(tensor, pattern, **sizes)
    except einops.EinopsError as exc:
        raise RuleError(f"{pattern!r} does not fit shape {list(tensor.shape)}") from exc
