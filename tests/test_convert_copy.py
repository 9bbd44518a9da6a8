"""The conversion's copies lay out any strided view exactly as ``contiguous()`` would.

Transposes are copied in strips of source rows and axes that step through memory together are
merged first (``pythia_tl.engine.copy.strided_copy``): both must give the same bytes for
every shape, including sizes that do not divide into whole strips.
"""

from __future__ import annotations

import pytest
import torch

from pythia_tl.engine.buffers import BufferPool
from pythia_tl.engine.copy import strided_copy

MB = 1 << 20


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_transpose_is_copied_exactly(rows: int, dtype: torch.dtype) -> None:
    source = torch.randn(rows, 96).to(dtype)
    pool = BufferPool(largest=64 * MB, limit=128 * MB)
    for target_dtype in (dtype, torch.float32):
        copy = strided_copy(source.t(), target_dtype, pool)
        assert copy.is_contiguous()
        assert torch.equal(copy, source.t().contiguous().to(target_dtype))


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((96, 4, 24), (1, 2, 0)),  # W_O: d_model (head d_head) -> head d_head d_model
        ((4, 3, 8, 40), (1, 0, 3, 2)),  # query_key_value: (head part d_head) d_model, by part
        ((5, 1, 70), (2, 1, 0)),  # a unit axis in between
        ((2, 3, 4, 5), (0, 1, 2, 3)),  # already in order
    ],
)
def test_a_permuted_view_is_copied_exactly(
    shape: tuple[int, ...], pattern: tuple[int, ...]
) -> None:
    view = torch.randn(shape).half().permute(pattern)
    copy = strided_copy(view, view.dtype, BufferPool(largest=64 * MB, limit=128 * MB))
    assert copy.shape == view.shape and copy.is_contiguous()
    assert torch.equal(copy, view.contiguous())
