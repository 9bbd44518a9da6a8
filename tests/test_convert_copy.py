"""The conversion's copies lay out any strided view exactly as ``contiguous()`` would.

Axes that step through memory together are merged first, and 2-D transposes are copied whole or
in strips of source rows, whichever runs faster here (``pythia_tl.engine.copy``): every kernel
must give the same bytes for every shape, including sizes that do not divide into whole strips,
and the choice must follow the measured rates.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pythia_tl.engine.buffers import BufferPool
from pythia_tl.engine.copy import KERNELS, TIMED_BYTES, TRIALS, Copier, Kernel, Transposes

MB = 1 << 20


def copier_using(kernel: str) -> Copier:
    transposes = Transposes()
    transposes.chosen = kernel
    return Copier(BufferPool(largest=64 * MB, limit=128 * MB), transposes)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_transpose_is_copied_exactly(kernel: str, rows: int, dtype: torch.dtype) -> None:
    source = torch.randn(rows, 96).to(dtype)
    copier = copier_using(kernel)
    for target_dtype in (dtype, torch.float32):
        copy = copier.strided(source.t(), target_dtype)
        assert copy.is_contiguous()
        assert torch.equal(copy, source.t().contiguous().to(target_dtype))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((96, 4, 24), (1, 2, 0)),  # W_O: d_model (head d_head) -> head d_head d_model
        ((4, 3, 8, 40), (1, 0, 3, 2)),  # query_key_value: (head part d_head) d_model, by part
        ((5, 1, 70), (2, 1, 0)),  # a unit axis in between
        ((2, 3, 4, 5), (0, 1, 2, 3)),  # already in order
        ((3, 130, 70), (0, 2, 1)),  # heads of transposes wider than a strip
    ],
)
def test_a_permuted_view_is_copied_exactly(
    kernel: str, shape: tuple[int, ...], pattern: tuple[int, ...]
) -> None:
    view = torch.randn(shape).half().permute(pattern)
    copy = copier_using(kernel).strided(view, view.dtype)
    assert copy.shape == view.shape and copy.is_contiguous()
    assert torch.equal(copy, view.contiguous())


class SteppedClock:
    """A clock that a kernel's copy advances by that kernel's cost per byte."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.now = 0.0
        self.cost = cost

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("faster", sorted(KERNELS))
def test_the_kernel_with_the_better_measured_rate_is_kept(
    faster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pythia_tl.engine.copy as copy_module

    clock = SteppedClock({name: 1.0 if name == faster else 3.0 for name in KERNELS})
    ran: list[str] = []

    def timed(name: str, real: Kernel) -> Kernel:
        def kernel(target: torch.Tensor, source: torch.Tensor) -> None:
            ran.append(name)
            real(target, source)
            clock.now += clock.cost[name] * target.numel() * target.element_size()

        return kernel

    monkeypatch.setattr(
        copy_module, "KERNELS", {name: timed(name, real) for name, real in KERNELS.items()}
    )
    transposes = Transposes(clock)
    rows = TIMED_BYTES // (2 * 64) + 1  # each copy just large enough to be timed
    source = torch.randn(rows, 64).half()
    for _ in range(TRIALS * len(KERNELS)):
        assert transposes.chosen is None
        target = torch.empty(64, rows, dtype=torch.half)
        transposes.copy(target, source.t())
        assert torch.equal(target, source.t())
    assert sorted(ran) == sorted(itertools.chain.from_iterable([k] * TRIALS for k in KERNELS))
    assert transposes.chosen == faster
    ran.clear()
    transposes.copy(torch.empty(64, rows, dtype=torch.half), source.t())
    assert ran == [faster]


def test_small_copies_are_not_timed() -> None:
    transposes = Transposes(lambda: pytest.fail("a small copy was timed"))
    source = torch.randn(8, 8).half()
    target = torch.empty(8, 8, dtype=torch.half)
    transposes.copy(target, source.t())
    assert torch.equal(target, source.t()) and transposes.chosen is None
