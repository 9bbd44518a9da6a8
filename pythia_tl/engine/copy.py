"""Copy kernels: a converted view laid out contiguously, fast, in reused memory.

Measured on the 2-core benchmark machine (torch 2.13, float16): torch's general strided loop
over three or more axes runs at 1-3.3 CPU s/GB, far slower than a 2-D transpose; so every copy
is brought down to 2-D transposes first (``Copier.strided``), and those are copied by whichever
of two kernels this machine runs faster (``Transposes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from pythia_tl.engine.buffers import BufferPool

# Most 2-D slices a copy is cut into (heads, in the Pythia table); beyond, one general copy.
MAX_SLICES = 4096
# Source rows per strip of a transpose copied in strips (within the first-level cache).
STRIP_ROWS = 64
# Copies of each kernel timed before one is chosen, and the least size of a timed copy (whole
# matrices, not the heads of W_Q, whose narrow slices favour neither kernel).
TRIALS = 3
TIMED_BYTES = 4 << 20

Kernel = Callable[[torch.Tensor, torch.Tensor], None]


def _whole(target: torch.Tensor, source: torch.Tensor) -> None:
    target.copy_(source)


def _in_strips(target: torch.Tensor, source: torch.Tensor) -> None:
    for start in range(0, source.shape[1], STRIP_ROWS):
        target[:, start : start + STRIP_ROWS].copy_(source[:, start : start + STRIP_ROWS])


KERNELS: dict[str, Kernel] = {"whole": _whole, "strips": _in_strips}


class Transposes:
    """Copies of 2-D transposes (views whose first axis steps by one element) by torch's own
    copy of the whole, or in strips of ``STRIP_ROWS`` source rows: whichever runs faster here.

    Which one that is depends on the CPU. On one host of the 2-core benchmark machine (torch
    2.13, float16, pythia-1.4b's and pythia-12b's shapes; ``benchmarks/kernels.py``) strips ran
    at 0.57-0.76 CPU s/GB against 1.43-1.60 for the whole copy; an earlier host had given the
    reverse (the whole copy 0.3-0.4 against 1.0 for strips). So the first copies of a
    conversion try both in turn, ``TRIALS`` each, timed on this thread's CPU clock (copies it
    makes anyway, of at least ``TIMED_BYTES``), and the one with the better rate is kept.
    """

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self._clock = clock
        self._rates: dict[str, list[float]] = {name: [] for name in KERNELS}
        self.chosen: str | None = None

    def copy(self, target: torch.Tensor, source: torch.Tensor) -> None:
        nbytes = target.numel() * target.element_size()
        if self.chosen is not None or nbytes < TIMED_BYTES:
            KERNELS[self.chosen or "whole"](target, source)
            return
        name = min(self._rates, key=lambda kernel: len(self._rates[kernel]))
        started = self._clock()
        KERNELS[name](target, source)
        self._rates[name].append((self._clock() - started) / nbytes)
        if all(len(rates) >= TRIALS for rates in self._rates.values()):
            # The best of each kernel's trials: the others paid for page faults or a busy cache.
            self.chosen = min(self._rates, key=lambda kernel: min(self._rates[kernel]))


class Copier:
    """Contiguous copies of converted views, in ``pool``'s memory; for one thread (the one
    that converts), like the pool."""

    def __init__(self, pool: BufferPool, transposes: Transposes | None = None) -> None:
        self.pool = pool
        self.transposes = transposes if transposes is not None else Transposes()

    def strided(self, view: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A contiguous copy of ``view`` in ``dtype``, in the pool's memory.

        Axes that step through memory together are merged first, so that a transpose seen
        through more than two axes (``W_O``'s ``d_model (n_heads d_head) -> n_heads d_head
        d_model``) is copied as the 2-D transpose it is; what stays 3-D (``W_Q``'s heads, each a
        transpose) is copied one 2-D slice at a time.
        """
        out = self.pool.empty(tuple(view.shape), dtype)
        sizes, strides = merged_axes(tuple(view.shape), tuple(view.stride()))
        source, target = view.as_strided(sizes, strides), out.view(sizes)
        if len(sizes) == 3 and sizes[0] <= MAX_SLICES:
            for index in range(sizes[0]):
                self._copy_2d(target[index], source[index])
        elif len(sizes) == 2:
            self._copy_2d(target, source)
        else:
            target.copy_(source)
        return out

    def owned(self, view: torch.Tensor, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``view`` laid out contiguously in memory that is not ``source``'s (its read buffer),
        in ``dtype`` when that takes no extra pass.

        A strided view is copied in its own dtype and cast afterwards (``cast``): casting while
        transposing was slower than the two passes when profiled. A contiguous view of memory
        of our own (a copy einops made) is used as it is.
        """
        shares_source = view.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
        if view.is_contiguous() and not shares_source:
            return view
        return self.strided(view, view.dtype if not view.is_contiguous() else dtype)

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if tensor.dtype == dtype:
            return tensor
        return self.strided(tensor, dtype)

    def _copy_2d(self, target: torch.Tensor, source: torch.Tensor) -> None:
        if source.stride(0) == 1 and target.dtype == source.dtype and source.shape[1] > 1:
            self.transposes.copy(target, source)
        else:
            target.copy_(source)


def merged_axes(
    shape: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``shape`` and ``stride`` with each run of axes that step through memory as one axis
    merged into one (the same elements in the same order, fewer axes)."""
    sizes: list[int] = []
    strides: list[int] = []
    for size, step in zip(shape, stride, strict=True):
        if size == 1:
            continue
        if sizes and strides[-1] == size * step:
            sizes[-1] *= size
            strides[-1] = step
        else:
            sizes.append(size)
            strides.append(step)
    return tuple(sizes) or (1,), tuple(strides) or (1,)
