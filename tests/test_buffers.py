"""The buffer pool reuses memory only once no tensor (or view of one) refers to it."""

from __future__ import annotations

import torch

from pythia_tl.engine.buffers import BufferPool

MB = 1 << 20


def base(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def test_memory_is_reused_only_after_every_view_is_gone() -> None:
    pool = BufferPool(largest=64 * MB, limit=256 * MB)
    first = pool.empty((4 * MB,), torch.uint8)
    first.fill_(1)
    where = base(first)
    view = first[10:20].view(torch.int16)  # a view keeps the memory in use
    del first
    second = pool.empty((4 * MB,), torch.uint8)
    assert base(second) != where
    second.fill_(2)
    assert bool((view.view(torch.uint8) == 1).all())  # untouched by the second tensor
    del view
    third = pool.empty((2 * MB,), torch.float16)  # 4 MB, fits the first buffer again
    assert base(third) == where
    assert third.shape == (2 * MB,) and third.dtype == torch.float16 and third.is_contiguous()


def test_the_smallest_free_buffer_that_fits_is_used() -> None:
    pool = BufferPool(largest=64 * MB, limit=256 * MB)
    big, small = pool.empty((32 * MB,), torch.uint8), pool.empty((2 * MB,), torch.uint8)
    where_big, where_small = base(big), base(small)
    del big, small
    assert base(pool.empty((MB + 1,), torch.uint8)) == where_small
    assert base(pool.empty((3 * MB,), torch.uint8)) == where_big


def test_the_pool_never_holds_more_than_its_limit() -> None:
    pool = BufferPool(largest=8 * MB, limit=16 * MB)
    held = [pool.empty((8 * MB,), torch.uint8) for _ in range(4)]  # two pooled, two not
    assert pool.held == 16 * MB
    assert len({base(t) for t in held}) == 4
    del held
    pool.empty((6 * MB,), torch.uint8)
    assert pool.held <= 16 * MB


def test_a_request_larger_than_pooled_tensors_lets_free_buffers_go() -> None:
    pool = BufferPool(largest=8 * MB, limit=32 * MB)
    kept = pool.empty((8 * MB,), torch.uint8)
    pool.empty((8 * MB,), torch.uint8)  # freed at once
    assert pool.held == 16 * MB
    large = pool.empty((16 * MB,), torch.uint8)
    assert pool.held == 8 * MB  # only the buffer still in use remains
    assert large.numel() == 16 * MB and base(large) != base(kept)


def test_small_requests_bypass_the_pool() -> None:
    pool = BufferPool(largest=8 * MB, limit=32 * MB)
    tensor = pool.empty((3, 5), torch.float32)
    assert tensor.shape == (3, 5) and pool.held == 0


def test_overlapping_conversions_restore_torch_threads_only_when_the_last_ends() -> None:
    from pythia_tl.engine.convert import _OneTorchThread

    before = torch.get_num_threads()
    limit = _OneTorchThread()
    first, second = limit.held(), limit.held()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still converts
    assert torch.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == before
