"""Copy kernels: a converted view laid out contiguously, fast, in reused memory.

Measured on the 2-core benchmark machine (torch 2.13, float16): torch's copy of a 2-D transpose
runs at 0.3-0.4 CPU s/GB, its general strided loop over three or more axes at 1-3.3 s/GB; so
every copy is brought down to 2-D transposes first.
"""

from __future__ import annotations

import torch

from pythia_tl.engine.buffers import BufferPool

# Most 2-D slices a copy is cut into (heads, in the Pythia table); beyond, one general copy.
MAX_SLICES = 4096


def strided_copy(view: torch.Tensor, dtype: torch.dtype, pool: BufferPool) -> torch.Tensor:
    """A contiguous copy of ``view`` in ``dtype``, in the pool's memory.

    Axes that step through memory together are merged first, so that a transpose seen through
    more than two axes (``W_O``'s ``d_model (n_heads d_head) -> n_heads d_head d_model``) is
    copied as the 2-D transpose it is; what stays 3-D (``W_Q``'s heads, each a transpose) is
    copied one 2-D slice at a time.
    """
    out = pool.empty(tuple(view.shape), dtype)
    sizes, strides = merged_axes(tuple(view.shape), tuple(view.stride()))
    source, target = view.as_strided(sizes, strides), out.view(sizes)
    if len(sizes) == 3 and sizes[0] <= MAX_SLICES:
        for index in range(sizes[0]):
            target[index].copy_(source[index])
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
