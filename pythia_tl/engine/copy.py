"""Copy kernels: a converted view laid out contiguously, fast, in reused memory.

Profiling the conversion on the 2-core benchmark machine (benchmarks/run.py) found torch's
general strided copy and its 2-D transpose far slower than the copies below for the transposes
the Pythia table makes.
"""

from __future__ import annotations

import torch

from pythia_tl.engine.buffers import BufferPool

# Source rows per strip of a transposed copy (see strided_copy).
STRIP_ROWS = 64


def strided_copy(view: torch.Tensor, dtype: torch.dtype, pool: BufferPool) -> torch.Tensor:
    """A contiguous copy of ``view`` in ``dtype``, in the pool's memory.

    Axes that step through memory together are merged first, so that a transpose seen through
    more than two axes (``W_O``'s ``d_model (n_heads d_head) -> n_heads d_head d_model``) is
    copied as the 2-D transpose it is rather than through torch's much slower general strided
    loop. A 2-D transpose is copied in strips of ``STRIP_ROWS`` source rows, each strip's reads
    staying within the CPU's first-level cache.
    """
    out = pool.empty(tuple(view.shape), dtype)
    sizes, strides = merged_axes(tuple(view.shape), tuple(view.stride()))
    source, target = view.as_strided(sizes, strides), out.view(sizes)
    if len(sizes) == 2 and strides[0] == 1:
        for start in range(0, sizes[1], STRIP_ROWS):
            target[:, start : start + STRIP_ROWS].copy_(source[:, start : start + STRIP_ROWS])
    else:
        target.copy_(source)
    return out


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


def owned(
    view: torch.Tensor, source: torch.Tensor, dtype: torch.dtype, pool: BufferPool
) -> torch.Tensor:
    """``view`` laid out contiguously in memory that is not ``source``'s (its read buffer), in
    ``dtype`` when that takes no extra pass.

    A strided view is copied in its own dtype and cast afterwards (``cast``): casting while
    transposing was slower than the two passes when profiled. A contiguous view of memory of our
    own (a copy einops made) is used as it is.
    """
    shares_source = view.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    if view.is_contiguous() and not shares_source:
        return view
    return strided_copy(view, view.dtype if not view.is_contiguous() else dtype, pool)


def cast(tensor: torch.Tensor, dtype: torch.dtype, pool: BufferPool) -> torch.Tensor:
    if tensor.dtype == dtype:
        return tensor
    return strided_copy(tensor, dtype, pool)
