"""The tensor reader: tensors that equal what safetensors and torch.load read, and conversion
streams that own their memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from synthetic import LAYOUTS

from pythia_tl.dtypes import BY_NAME
from pythia_tl.engine.pipeline import convert_tensors
from pythia_tl.errors import CheckpointError
from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.source import checkpoint as checkpoint_module
from pythia_tl.source.checkpoint import open_checkpoint
from pythia_tl.source.reader import TensorReader
from pythia_tl.source.spans import Span, check_span, contiguous_stride
from pythia_tl.source.weight_file import WeightFile


def library_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as safetensors or torch.load reads it."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix == ".safetensors":
            with safe_open(file, "pt") as handle:
                tensors.update({k: handle.get_tensor(k) for k in handle.keys()})  # noqa: SIM118
        elif file.suffix == ".bin":
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    return tensors


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mapped_tensors_equal_what_the_libraries_read(tiny_checkpoints, layout: str) -> None:
    checkpoint = open_checkpoint(tiny_checkpoints[layout])
    expected = library_tensors(tiny_checkpoints[layout])
    assert set(checkpoint.tensors) == set(expected)
    with TensorReader(checkpoint) as reader:
        for name, info in checkpoint.tensors.items():
            assert info.span is not None, name
            got = reader.read(name)
            assert got.dtype == expected[name].dtype and got.shape == expected[name].shape
            assert torch.equal(got, expected[name]), name
            reader.release(name)
            assert torch.equal(reader.read(name), expected[name]), f"{name} after release"


def test_bin_views_with_strides_and_storage_offsets(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32)
    state = {
        "transposed": torch.arange(12, dtype=torch.float16).reshape(3, 4).t(),
        "slice": base[10:20],
        "strided": base.view(6, 10)[1:4, ::3],
        "shares": base[:5],
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 3),
    }
    folder = tmp_path / "bin"
    folder.mkdir()
    file = folder / "weights.bin"
    torch.save(state, file)
    infos = {i.name: i for i in checkpoint_module.read_headers(file, "bin")}
    checkpoint = checkpoint_module.Checkpoint(folder, None, "bin", (file,), infos)  # type: ignore[arg-type]
    with TensorReader(checkpoint) as reader:
        for name, tensor in state.items():
            assert infos[name].span is not None
            got = reader.read(name)
            assert got.shape == tensor.shape and got.stride() == tensor.stride(), name
            assert torch.equal(got, tensor), name


def test_bin_without_storage_offsets_is_read_through_torch(
    tiny_checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A big-endian archive (or a torch that reports no offsets) falls back to torch.load(mmap=True).
    monkeypatch.setattr(checkpoint_module, "is_little_endian", lambda *args, **kwargs: False)
    checkpoint = open_checkpoint(tiny_checkpoints["bin"])
    expected = library_tensors(tiny_checkpoints["bin"])
    with TensorReader(checkpoint) as reader:
        for name, info in checkpoint.tensors.items():
            assert info.span is None
            assert torch.equal(reader.read(name), expected[name])
            reader.release(name)


def test_check_span_refuses_ranges_outside_the_file_or_storage() -> None:
    f16 = BY_NAME["float16"]
    assert check_span(Span(0, 24, (3, 1)), (4, 3), f16, 24) is None
    assert "outside the file" in str(check_span(Span(8, 24, (3, 1)), (4, 3), f16, 24))
    assert "outside the file" in str(check_span(Span(-2, 4, (1,)), (2,), f16, 24))
    assert "reaches past" in str(check_span(Span(0, 22, (3, 1)), (4, 3), f16, 24))
    assert "reaches past" in str(check_span(Span(0, 24, (3, 1), 1), (4, 3), f16, 24))
    assert "whole" in str(check_span(Span(0, 23, (1,)), (1,), f16, 24))
    assert "does not fit" in str(check_span(Span(0, 24, (1,)), (4, 3), f16, 24))
    assert "does not fit" in str(check_span(Span(0, 24, (-1, 1)), (4, 3), f16, 24))
    assert check_span(Span(0, 0, (1,)), (0,), f16, 0) is None
    assert contiguous_stride((2, 3, 4)) == (12, 4, 1)


def test_truncated_bin_is_refused_by_name(tmp_path: Path) -> None:
    file = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(4)}, file)
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a readable PyTorch"):
        list(checkpoint_module.read_headers(file, "bin"))


def mapped_ranges(files: set[str]) -> list[tuple[int, int, str]]:
    """The address ranges where this process maps any of ``files`` (Linux's /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in files:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end, Path(fields[5]).name))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded"])
def test_converted_tensors_own_their_memory(tiny_checkpoints, layout: str) -> None:
    checkpoint = open_checkpoint(tiny_checkpoints[layout])
    files = {str(file.resolve()) for file in checkpoint.files}
    plan = plan_conversion(checkpoint)
    with TensorReader(checkpoint) as reader:
        seen = 0
        for planned, tensor in convert_tensors(plan, reader):
            assert tensor.is_contiguous(), planned.key
            assert tuple(tensor.shape) == planned.shape, planned.key
            ranges = mapped_ranges(files)
            for start, end, name in ranges:
                assert not start <= tensor.data_ptr() < end, f"{planned.key} is a view of {name}"
            seen += 1
    assert seen == len(plan.tensors)


def test_header_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({}))
    bad = folder / "model.safetensors"
    bad.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        list(checkpoint_module.read_headers(bad, "safetensors"))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("auto", torch.float16), ("float32", torch.float32), ("bfloat16", torch.float16)],
)
def test_converted_tensors_widen_losslessly_only(tiny_checkpoints, dtype, expected) -> None:
    # float16 -> float32 loses nothing and is done while converting; a narrowing or sideways cast
    # (float16 -> bfloat16) is left to finish(), after any processing.
    checkpoint = open_checkpoint(tiny_checkpoints["safetensors"])
    plan = plan_conversion(checkpoint, dtype)
    sources = library_tensors(tiny_checkpoints["safetensors"])
    with TensorReader(checkpoint) as reader:
        for planned, tensor in convert_tensors(plan, reader):
            # Tensors with no source (the zero unembedding bias) are made in the output dtype.
            assert tensor.dtype == (expected if planned.source else plan.dtype.torch), planned.key
            if planned.key == "embed.W_E":
                assert torch.equal(tensor, sources["gpt_neox.embed_in.weight"].to(expected))


def test_a_closed_or_shrunk_file_refuses_to_read(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(64))
    opened = WeightFile(path)
    with pytest.raises(CheckpointError, match=r"w\.bin: ends at byte 64, before the 64 bytes"):
        opened.tensor(Span(32, 64, (1,)), (64,), BY_NAME["uint8"])
    view = opened.tensor(Span(0, 64, (1,)), (64,), BY_NAME["uint8"])
    opened.close()
    assert int(view.sum()) == 0  # a tensor read before closing stays readable
    with pytest.raises(CheckpointError, match="read after its reader was closed"):
        opened.tensor(Span(0, 64, (1,)), (64,), BY_NAME["uint8"])


def test_auto_writes_float32_for_a_source_mixing_float16_and_bfloat16(
    tiny_checkpoints, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "mixed"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    state = load_file(folder / "model.safetensors")
    state["gpt_neox.embed_in.weight"] = state["gpt_neox.embed_in.weight"].to(torch.bfloat16)
    save_file(state, folder / "model.safetensors")
    # float32 holds both exactly; either half-width dtype would round the other's values.
    assert plan_conversion(open_checkpoint(folder)).dtype == BY_NAME["float32"]
