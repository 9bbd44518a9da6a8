"""The local reader of a conversion: the tensors TensorReader reads, in memory reused only once
nothing refers to it."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyCheckpoints
from synthetic import LAYOUTS

import pythia_tl.engine.buffers as buffers
from pythia_tl.engine.pipeline import convert_tensors
from pythia_tl.engine.reading import ReusingReader
from pythia_tl.errors import CheckpointError
from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.source.checkpoint import open_checkpoint
from pythia_tl.source.reader import TensorReader


@pytest.fixture
def pool_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny checkpoints' tensors are far below the size the pool takes: pool them all."""
    monkeypatch.setattr(buffers, "_SMALLEST", 1)


def base(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensors_equal_what_the_tensor_reader_reads(
    tiny_checkpoints: TinyCheckpoints, layout: str, pool_everything: None
) -> None:
    checkpoint = open_checkpoint(tiny_checkpoints[layout])
    plan = plan_conversion(checkpoint, "auto")
    with TensorReader(checkpoint) as plain, ReusingReader(checkpoint, plan) as reusing:
        held = {}
        for name in checkpoint.tensors:
            got = reusing.read(name)
            assert torch.equal(got, plain.read(name)), name
            assert got.stride() == plain.read(name).stride(), name
            held[name] = got
        # Every tensor held is intact after all the others were read.
        for name, tensor in held.items():
            assert torch.equal(tensor, plain.read(name)), f"{name} overwritten"


def test_memory_is_reused_once_the_tensor_is_gone(
    tiny_checkpoints: TinyCheckpoints, pool_everything: None
) -> None:
    checkpoint = open_checkpoint(tiny_checkpoints["safetensors"])
    plan = plan_conversion(checkpoint, "auto")
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    with ReusingReader(checkpoint, plan) as reader:
        first = reader.read(name)
        where, value = base(first), first.clone()
        second = reader.read(name)
        assert base(second) != where  # the first is still held
        del first
        third = reader.read(name)
        assert base(third) == where and torch.equal(third, value)
        assert torch.equal(second, value)


def test_conversion_from_reused_memory_equals_the_plain_one(
    tiny_checkpoints: TinyCheckpoints, pool_everything: None
) -> None:
    checkpoint = open_checkpoint(tiny_checkpoints["bin"])
    plan = plan_conversion(checkpoint, "auto")
    with TensorReader(checkpoint) as plain, ReusingReader(checkpoint, plan) as reusing:
        expected = {p.key: t for p, t in convert_tensors(plan, plain)}
        got = {p.key: t for p, t in convert_tensors(plan, reusing)}
    assert expected.keys() == got.keys()
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def test_a_read_after_close_is_refused(
    tiny_checkpoints: TinyCheckpoints, pool_everything: None
) -> None:
    checkpoint = open_checkpoint(tiny_checkpoints["safetensors"])
    reader = ReusingReader(checkpoint, plan_conversion(checkpoint, "auto"))
    reader.read("gpt_neox.embed_in.weight")
    reader.close()
    with pytest.raises(CheckpointError, match="closed"):
        reader.read("gpt_neox.layers.0.mlp.dense_h_to_4h.weight")
