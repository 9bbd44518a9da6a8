"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import Run, TinyCheckpoints

from pythia_tl.cli import main


@pytest.fixture
def ckpt(tiny_checkpoints: TinyCheckpoints, tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of a tiny checkpoint, free to damage."""

    def copy(layout: str) -> Path:
        folder = tmp_path / f"src-{layout}"
        shutil.copytree(tiny_checkpoints[layout], folder)
        return folder

    return copy


def assert_fails_cleanly(
    result: tuple[int, str, str], out_dir: Path, code: int, *fragments: str
) -> None:
    status, stdout, stderr = result
    assert status == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert stdout == ""
    leftovers = [p.name for p in out_dir.iterdir() if p.name.endswith((".safetensors", ".tmp"))]
    assert leftovers == [], leftovers


def test_truncated_safetensors(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("safetensors")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    out.mkdir()
    result = cli(["convert", str(folder), "-o", str(out / "x.safetensors")])
    assert_fails_cleanly(result, out, 1, str(weights), "not a valid safetensors file")


def test_garbage_safetensors(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("safetensors")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, "model.safetensors", "not a valid safetensors file")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_bin_holding_more_than_tensors_is_refused_unexecuted(
    cli: Run, ckpt, tmp_path: Path
) -> None:
    folder = ckpt("bin")
    marker = tmp_path / "code-ran"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, folder / "pytorch_model.bin")
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, "pytorch_model.bin", "refused")
    assert not marker.exists()


def test_a_bin_that_is_not_a_torch_file(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("bin")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, "pytorch_model.bin")


def test_a_bin_holding_a_non_tensor_value(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["gpt_neox.embed_in.weight"] = [1, 2, 3]
    torch.save(state, folder / "pytorch_model.bin")
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, "expected a mapping of tensor names to tensors")
    assert zipfile.is_zipfile(folder / "pytorch_model.bin")


def test_index_naming_a_missing_shard(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("safetensors-sharded")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, "model.safetensors.index.json", shard.name, "missing")


@pytest.mark.parametrize("escape", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_index_pointing_outside_the_folder(escape: str, cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("bin-sharded")
    index_path = folder / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = escape
    index_path.write_text(json.dumps(index))
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, "pytorch_model.bin.index.json", repr(escape))


def test_index_shard_linking_outside_the_folder(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("bin-sharded")
    shard = sorted(folder.glob("pytorch_model-*.bin"))[0]
    elsewhere = tmp_path / "elsewhere.bin"
    shard.rename(elsewhere)
    shard.symlink_to(elsewhere)
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(result, tmp_path, 1, shard.name, "outside the checkpoint folder")


def test_config_sizes_that_disagree_with_the_tensors(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(
        result, tmp_path, 1, "gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "config.json implies"
    )


def test_missing_weight(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["gpt_neox.layers.1.attention.dense.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(
        result, tmp_path, 1, "missing tensor gpt_neox.layers.1.attention.dense.bias"
    )


def test_extra_weight(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["gpt_neox.layers.0.attention.lora_A.weight"] = torch.zeros(2, 2)
    torch.save(state, folder / "pytorch_model.bin")
    result = cli(["convert", str(folder), "-o", str(tmp_path / "x.safetensors")])
    assert_fails_cleanly(
        result, tmp_path, 1, "unexpected tensor gpt_neox.layers.0.attention.lora_A.weight"
    )


@pytest.mark.parametrize(
    ("layout", "dtype", "fragment"),
    [
        ("bin", torch.int32, "has dtype int32, expected a float dtype"),
        ("safetensors", torch.int32, "has dtype int32, expected a float dtype"),
        ("bin", torch.complex64, "has dtype complex64, which pythia-tl does not read"),
    ],
)
def test_a_weight_that_is_not_a_float(
    layout: str, dtype: torch.dtype, fragment: str, cli: Run, ckpt, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = ckpt(layout)
    name = "gpt_neox.layers.0.attention.dense.bias"
    if layout == "bin":
        state = torch.load(folder / "pytorch_model.bin", weights_only=True)
        state[name] = state[name].to(dtype)
        torch.save(state, folder / "pytorch_model.bin")
    else:
        state = load_file(folder / "model.safetensors")
        state[name] = state[name].to(dtype)
        save_file(state, folder / "model.safetensors")
    result = cli(["plan", str(folder)])
    assert_fails_cleanly(result, tmp_path, 1, name, fragment)


def test_an_output_in_a_folder_that_does_not_exist_creates_it(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    # As -o no/such/ does: the folder is made once the source is found.
    target = tmp_path / "no" / "such" / "x.safetensors"
    status, _, stderr = cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target)])
    assert status == 0, stderr
    assert [p.name for p in target.parent.iterdir()] == ["x.safetensors"]
    # A source that cannot be found leaves no folder behind.
    target = tmp_path / "other" / "x.safetensors"
    result = cli(["convert", str(tmp_path / "no-such-source"), "-o", str(target)])
    assert result[0] != 0 and not target.parent.exists()


@pytest.mark.parametrize("into_folder", [False, True])
def test_output_folder_that_cannot_be_written(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, into_folder: bool
) -> None:
    # A regular file where a folder should be: refused even for root, unlike permission bits.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = f"{blocker / 'sub'}/" if into_folder else str(blocker / "sub" / "x.safetensors")
    result = cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", target])
    assert_fails_cleanly(
        result, tmp_path, 1, str(blocker / "sub"), f"cannot create a folder there ({blocker} is"
    )
    assert blocker.read_text() == ""


def test_existing_output_without_force(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"keep me")
    status, _, stderr = cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target)])
    assert status == 1
    assert stderr.strip() == f"error: {target}: already exists (use --force to overwrite)"
    assert target.read_bytes() == b"keep me"
    status, _, stderr = cli(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "--force", "-q"]
    )
    assert (status, stderr) == (0, "")
    assert target.read_bytes() != b"keep me"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["convert", "pythia-71m"], "unknown model name 'pythia-71m'"),
        (["convert", "./no-such-folder"], "./no-such-folder: no such folder"),
        (["convert", "pythia-70m", "--dtype", "int8"], "--dtype 'int8'"),
        (["convert", "pythia-70m", "--step", "1", "--revision", "main"], "alternatives"),
        (["convert", "pythia-70m", "--step", "x"], "Invalid value for '--step'"),
        (["convert"], "Missing argument"),
        (["convert", "pythia-70m", "--frobnicate"], "No such option"),
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str, cli: Run, tmp_path: Path) -> None:
    result = cli(args)
    assert_fails_cleanly(result, tmp_path, 2, fragment)


def test_debug_shows_the_traceback(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt("safetensors")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(Exception, match="not a valid safetensors file"):
        main(["convert", str(folder), "-o", str(tmp_path / "x.safetensors"), "--debug"])
