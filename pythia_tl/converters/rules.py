"""Rules: ``target key <- source key + chain of steps``, written once per layer as templates.

A rule names the TransformerLens key it produces, the source key it reads (with alternative
spellings, first found wins), the chain of steps, and the shapes both ends must have, written as
dimension expressions such as ``("3*d_model", "d_model")``. ``expand`` instantiates the templates
for every layer; the planner checks each concrete rule against the checkpoint's headers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pythia_tl.converters.steps import Concat, Shape, Split, Step, StepError, apply_chain

ShapeExpr = tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """One line of a conversion table (a template while its keys contain ``{l}``)."""

    target: str
    target_shape: ShapeExpr
    source: str | None
    source_shape: ShapeExpr = ()
    steps: tuple[Step, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    @property
    def per_layer(self) -> bool:
        return "{l}" in self.target

    @property
    def source_names(self) -> tuple[str, ...]:
        """Every spelling of the source key, the canonical one first."""
        return () if self.source is None else (self.source, *self.aliases)

    def at_layer(self, layer: int) -> Rule:
        def fill(key: str) -> str:
            return key.replace("{l}", str(layer))

        return Rule(
            target=fill(self.target),
            target_shape=self.target_shape,
            source=None if self.source is None else fill(self.source),
            source_shape=self.source_shape,
            steps=self.steps,
            aliases=tuple(fill(alias) for alias in self.aliases),
        )

    def bind(self, dims: Mapping[str, int]) -> Rule:
        """This rule with named sizes in its steps replaced by the model's sizes."""
        return Rule(
            self.target,
            self.target_shape,
            self.source,
            self.source_shape,
            tuple(step.bind(dims) for step in self.steps),
            self.aliases,
        )


def expand(table: Sequence[Rule], n_layers: int, dims: Mapping[str, int]) -> list[Rule]:
    """Concrete, bound rules in table order, the per-layer rules repeated layer by layer where
    the first of them stands."""
    layer_rules = [rule for rule in table if rule.per_layer]
    concrete: list[Rule] = []
    for rule in table:
        if not rule.per_layer:
            concrete.append(rule)
        elif rule is layer_rules[0]:
            concrete.extend(r.at_layer(i) for i in range(n_layers) for r in layer_rules)
    return [rule.bind(dims) for rule in concrete]


_TERM = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+")


def eval_shape(expr: ShapeExpr, dims: Mapping[str, int]) -> Shape:
    """Evaluate dimension expressions: products of integers and dimension names."""
    shape = []
    for axis in expr:
        factors = [part.strip() for part in axis.split("*")]
        if not all(_TERM.fullmatch(f) for f in factors):
            raise StepError(f"bad shape expression {axis!r}")
        try:
            shape.append(math.prod(int(f) if f.isdigit() else dims[f] for f in factors))
        except KeyError as exc:
            raise StepError(f"unknown dimension {exc.args[0]!r} in {axis!r}") from None
    return tuple(shape)


def invert(rules: Sequence[Rule], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rebuild the source tensors from converted ones by running every chain backwards.

    Rules that split one source into pieces are joined again by ``Split``'s inverse, ``Concat``;
    rules with no source (zeros) have nothing to give back.
    """
    sources: dict[str, torch.Tensor] = {}
    # (source, steps before the split, the split's axis and parts) -> {piece index: piece}
    pieces: dict[tuple[str, tuple[Step, ...], int, int], dict[int, torch.Tensor]] = {}
    for rule in rules:
        if rule.source is None:
            continue
        tensor = targets[rule.target]
        at = next((i for i, step in enumerate(rule.steps) if isinstance(step, Split)), None)
        if at is None:
            sources[rule.source] = _undo_chain(rule.steps, tensor)
            continue
        cut = rule.steps[at]
        assert isinstance(cut, Split)
        group = (rule.source, rule.steps[:at], cut.axis, cut.parts)
        pieces.setdefault(group, {})[cut.index] = _undo_chain(rule.steps[at + 1 :], tensor)
    for (source, prefix, axis, parts), by_index in pieces.items():
        joined = Concat(axis, parts, 0).join([by_index[i] for i in range(parts)])
        sources[source] = _undo_chain(prefix, joined)
    return sources


def _undo_chain(steps: Sequence[Step], tensor: torch.Tensor) -> torch.Tensor:
    return apply_chain([step.inverse() for step in reversed(steps)], tensor)
