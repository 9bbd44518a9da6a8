"""The vocabulary of conversion steps.

A step turns one tensor into another. Each step knows three things about itself:

* ``output_shape(shape)``: the shape it produces, computed from the input shape alone, so a whole
  conversion can be planned from file headers before any tensor data is read;
* ``apply(tensor)``: the computation;
* ``inverse()``: the step that undoes it (exporting back to the HF layout uses the same table).

Sizes in a step may name a model dimension (``head="n_heads"``); ``bind(dims)`` replaces the names
by the sizes read from the checkpoint's config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import einops
import torch

Shape = tuple[int, ...]
Size = int | str


class StepError(ValueError):
    """A step cannot be applied to a tensor of the given shape."""


def resolve_size(size: Size, dims: Mapping[str, int]) -> int:
    """An integer size, or the value of a named dimension such as ``"n_heads"``."""
    if isinstance(size, int):
        return size
    try:
        return dims[size]
    except KeyError:
        raise StepError(f"unknown dimension {size!r}; known: {', '.join(sorted(dims))}") from None


class Step(ABC):
    """One conversion step; subclasses are frozen dataclasses so steps compare and hash by value."""

    def bind(self, dims: Mapping[str, int]) -> Step:
        """This step with every named size replaced by its value."""
        return self

    @abstractmethod
    def output_shape(self, shape: Shape) -> Shape: ...

    @abstractmethod
    def apply(self, tensor: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def inverse(self) -> Step: ...

    @abstractmethod
    def describe(self) -> str: ...


@dataclass(frozen=True)
class Rearrange(Step):
    """``einops.rearrange`` with a fixed pattern; ``sizes`` are its axis lengths."""

    pattern: str
    sizes: tuple[tuple[str, Size], ...] = ()

    def bind(self, dims: Mapping[str, int]) -> Rearrange:
        return replace(self, sizes=tuple((k, resolve_size(v, dims)) for k, v in self.sizes))

    def output_shape(self, shape: Shape) -> Shape:
        # einops works on meta tensors: the result's shape without allocating any data.
        return tuple(self.apply(torch.empty(shape, device="meta")).shape)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        sizes = {name: size for name, size in self.sizes}
        if any(isinstance(size, str) for size in sizes.values()):
            raise StepError(f"rearrange {self.pattern!r} has unbound sizes {sizes}")
        try:
            return einops.rearrange(tensor, self.pattern, **sizes)
        except einops.EinopsError as exc:
            shape = list(tensor.shape)
            raise StepError(f"rearrange {self.pattern!r} does not fit shape {shape}") from exc

    def apply_unmerged(self, tensor: torch.Tensor) -> tuple[torch.Tensor, Shape]:
        """The rearranged values with the output's merged axes (``(part head)``) still apart, and
        the shape they take once merged.

        The unmerged result is a view of ``tensor`` (when that is contiguous); merging axes
        whose strides do not line up needs a copy, which ``apply`` leaves to einops and this
        leaves to the caller, who may have memory at hand for it.
        """
        left, right = self.pattern.split("->")
        unmerged = replace(self, pattern=f"{left}-> {right.replace('(', ' ').replace(')', ' ')}")
        return unmerged.apply(tensor), self.output_shape(tuple(tensor.shape))

    def inverse(self) -> Rearrange:
        left, right = self.pattern.split("->")
        return replace(self, pattern=f"{right.strip()} -> {left.strip()}")

    def describe(self) -> str:
        sizes = "".join(f", {name}={size}" for name, size in self.sizes)
        return f"rearrange('{self.pattern}'{sizes})"


@dataclass(frozen=True)
class Split(Step):
    """Cut ``axis`` into ``parts`` equal pieces and keep piece ``index``."""

    axis: int
    parts: int
    index: int

    def output_shape(self, shape: Shape) -> Shape:
        if not -len(shape) <= self.axis < len(shape):
            raise StepError(f"split: axis {self.axis} out of range for shape {list(shape)}")
        if shape[self.axis] % self.parts:
            raise StepError(
                f"split: axis {self.axis} of shape {list(shape)} is not divisible into "
                f"{self.parts} parts"
            )
        out = list(shape)
        out[self.axis] //= self.parts
        return tuple(out)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        self.output_shape(tuple(tensor.shape))
        return tensor.chunk(self.parts, dim=self.axis)[self.index]

    def inverse(self) -> Concat:
        return Concat(self.axis, self.parts, self.index)

    def describe(self) -> str:
        return f"split(axis={self.axis}, part {self.index + 1} of {self.parts})"


@dataclass(frozen=True)
class Concat(Step):
    """The inverse of ``Split``: the pieces of one axis, joined in order.

    It takes all ``parts`` pieces at once (``join``); on a single tensor it only checks the shape.
    """

    axis: int
    parts: int
    index: int

    def output_shape(self, shape: Shape) -> Shape:
        out = list(shape)
        out[self.axis] *= self.parts
        return tuple(out)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        raise StepError("concat joins several pieces: use join()")

    def join(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(pieces) != self.parts:
            raise StepError(f"concat expects {self.parts} pieces, got {len(pieces)}")
        return torch.cat(list(pieces), dim=self.axis)

    def inverse(self) -> Split:
        return Split(self.axis, self.parts, self.index)

    def describe(self) -> str:
        return f"concat(axis={self.axis}, {self.parts} parts)"


@dataclass(frozen=True)
class Transpose(Step):
    """Swap two axes (its own inverse)."""

    dim0: int = 0
    dim1: int = 1

    def output_shape(self, shape: Shape) -> Shape:
        out = list(shape)
        try:
            out[self.dim0], out[self.dim1] = out[self.dim1], out[self.dim0]
        except IndexError:
            raise StepError(
                f"transpose({self.dim0}, {self.dim1}) needs more axes than {list(shape)}"
            ) from None
        return tuple(out)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        self.output_shape(tuple(tensor.shape))
        return tensor.transpose(self.dim0, self.dim1)

    def inverse(self) -> Transpose:
        return self

    def describe(self) -> str:
        return f"transpose({self.dim0}, {self.dim1})"


@dataclass(frozen=True)
class Zeros(Step):
    """A tensor of zeros of a fixed shape; it reads no source (Pythia has no unembedding bias)."""

    shape: tuple[Size, ...]

    def bind(self, dims: Mapping[str, int]) -> Zeros:
        return replace(self, shape=tuple(resolve_size(size, dims) for size in self.shape))

    def output_shape(self, shape: Shape) -> Shape:
        return tuple(resolve_size(size, {}) for size in self.shape)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.output_shape(()), dtype=tensor.dtype)

    def inverse(self) -> Drop:
        return Drop()

    def describe(self) -> str:
        return f"zeros({', '.join(str(size) for size in self.shape)})"


@dataclass(frozen=True)
class Drop(Step):
    """The inverse of ``Zeros``: the tensor has no counterpart in the source layout."""

    def output_shape(self, shape: Shape) -> Shape:
        return ()

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.new_empty(())

    def inverse(self) -> Step:
        raise StepError("drop has no inverse: the dropped values are not known")

    def describe(self) -> str:
        return "drop"


def rearrange(pattern: str, **sizes: Size) -> Rearrange:
    return Rearrange(pattern, tuple(sizes.items()))


def split(axis: int, parts: int, index: int) -> Split:
    return Split(axis, parts, index)


def transpose(dim0: int = 0, dim1: int = 1) -> Transpose:
    return Transpose(dim0, dim1)


def zeros(*shape: Size) -> Zeros:
    return Zeros(tuple(shape))


def chain_shape(steps: Sequence[Step], shape: Shape) -> Shape:
    """The shape after a chain of steps, from the input shape alone."""
    for step in steps:
        shape = step.output_shape(shape)
    return shape


def apply_chain(steps: Sequence[Step], tensor: torch.Tensor) -> torch.Tensor:
    for step in steps:
        tensor = step.apply(tensor)
    return tensor
