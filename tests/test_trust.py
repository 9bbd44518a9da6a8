"""Trust, second pass: the source is never harmed, nothing is silent, nothing is unbounded, a
source changing underneath is caught, names from files are data, long names work."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, HfEnv, Run, TinyCheckpoints
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pythia_tl.engine import hashing
from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.errors import CheckpointError, OutputError, SourceError
from pythia_tl.output.atomic import remove_stale_temporaries, temp_path_for
from pythia_tl.output.metadata import parse_metadata, read_output
from pythia_tl.source import resolve_source
from pythia_tl.source.checkpoint import open_checkpoint


@pytest.fixture
def ckpt(tiny_checkpoints: TinyCheckpoints, tmp_path: Path) -> Callable[..., Path]:
    """A private copy of a tiny checkpoint, free to damage."""

    def copy(layout: str = "safetensors", name: str | None = None) -> Path:
        folder = tmp_path / (name or f"src-{layout}")
        shutil.copytree(tiny_checkpoints[layout], folder)
        return folder

    return copy


def one_error_line(result: tuple[int, str, str], code: int = 1) -> str:
    status, _, stderr = result
    assert status == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "--debug" not in stderr, stderr  # no "unexpected X"
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- 1. the source is never harmed ---------------------------------------------------------


@pytest.mark.parametrize("how", ["itself", "dot-dot", "symlink", "hard link"])
def test_an_output_onto_the_source_weights_is_refused_even_with_force(
    how: str, cli: Run, ckpt, tmp_path: Path
) -> None:
    folder = ckpt()
    weights = folder / "model.safetensors"
    before = snapshot(folder)
    target = {
        "itself": weights,
        "dot-dot": folder / ".." / folder.name / "model.safetensors",
        "symlink": tmp_path / "link.safetensors",
        "hard link": tmp_path / "hard.safetensors",
    }[how]
    if how == "symlink":
        target.symlink_to(weights)
    if how == "hard link":
        os.link(weights, target)
    line = one_error_line(cli(["convert", str(folder), "-o", str(target), "--force"]))
    assert "is the source file" in line
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("layout", "name"),
    [
        ("safetensors", "config.json"),
        ("safetensors-sharded", "model.safetensors.index.json"),
        ("bin-sharded", "pytorch_model-00001-of-00008.bin"),
    ],
)
def test_config_index_and_shards_are_never_overwritten(
    layout: str, name: str, cli: Run, ckpt
) -> None:
    folder = ckpt(layout)
    assert (folder / name).is_file()
    before = snapshot(folder)
    one_error_line(cli(["convert", str(folder), "-o", str(folder / name), "--force"]))
    assert snapshot(folder) == before


def test_a_name_that_changes_how_the_source_folder_reads_is_refused(cli: Run, ckpt) -> None:
    # A model.safetensors beside a .bin checkpoint would be read instead of it next time.
    folder = ckpt("bin")
    line = one_error_line(cli(["convert", str(folder), "-o", str(folder / "model.safetensors")]))
    assert "would change how the checkpoint reads" in line
    assert not (folder / "model.safetensors").exists()
    # Any other name in the folder is fine.
    status, _, stderr = cli(["convert", str(folder), "-o", str(folder / "converted.safetensors")])
    assert status == 0, stderr


def _unix_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()


def _null_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is


def test_force_never_replaces_a_directory(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    target = tmp_path / "out.safetensors"
    target.mkdir()
    source = resolve_source(str(tiny_checkpoints["safetensors"]))
    with pytest.raises(OutputError, match="is a directory, which is never replaced"):
        convert(source, target, ConvertOptions(overwrite=True))
    # The command line takes an existing folder as where to write the default name.
    status, _, stderr = cli(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "--force"]
    )
    assert status == 0, stderr
    assert target.is_dir() and (target / "safetensors.safetensors").is_file()


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_force_replaces_regular_files_only(
    kind: str, cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    target = tmp_path / "out.safetensors"
    make = {
        "fifo": lambda: os.mkfifo(target),
        "socket": lambda: _unix_socket(target),
        "device": lambda: _null_device(target),
    }
    make[kind]()
    line = one_error_line(
        cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "--force"])
    )
    assert "which is never replaced (only a regular file or a symbolic link is)" in line
    assert not target.is_file()


def test_force_replaces_a_symlink_not_the_file_it_points_to(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "precious.txt"
    elsewhere.write_text("keep me")
    target = tmp_path / "out.safetensors"
    target.symlink_to(elsewhere)
    status, _, stderr = cli(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "--force"]
    )
    assert status == 0, stderr
    assert not target.is_symlink() and elsewhere.read_text() == "keep me"


# --- 2. nothing silent ---------------------------------------------------------------------


def _edit_checkpoint(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights)
    config = json.loads((folder / "config.json").read_text())
    config["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config))


def _to_float32_with_a_large_value(tensors: dict[str, torch.Tensor]) -> None:
    for name in tensors:
        tensors[name] = tensors[name].float()
    tensors["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"][3, 5] = 1e5


def _with_a_nan(tensors: dict[str, torch.Tensor]) -> None:
    tensors["gpt_neox.layers.0.attention.dense.bias"][7] = float("nan")


@pytest.mark.parametrize(
    ("edit", "dtype", "fragments"),
    [
        (
            _to_float32_with_a_large_value,
            "float16",
            ["blocks.1.mlp.W_in: 100000.0 at [5, 3] is out of float16's range"],
        ),
        (_with_a_nan, "auto", ["blocks.0.attn.b_O: the source holds 1 non-finite", "[7]"]),
    ],
)
def test_non_finite_values_are_refused_unless_allowed_and_verify_agrees(
    edit, dtype: str, fragments: list[str], cli: Run, ckpt, tmp_path: Path
) -> None:
    folder = ckpt()
    _edit_checkpoint(folder, edit)
    out = tmp_path / "out.safetensors"
    line = one_error_line(cli(["convert", str(folder), "-o", str(out), "--dtype", dtype]))
    for fragment in fragments:
        assert fragment in line
    assert "--allow-nonfinite" in line and not out.exists()

    args = ["convert", str(folder), "-o", str(out), "--dtype", dtype, "--allow-nonfinite"]
    status, _, stderr = cli(args)
    assert status == 0, stderr
    assert read_output(out).metadata["nonfinite"] == "allowed"
    status, stdout, stderr = cli(["verify", str(out)])
    assert status == 0, stdout + stderr

    # The same bytes recorded as "refused" (same length, so the header keeps its size) fail.
    data = out.read_bytes()
    assert data.count(b'"nonfinite":"allowed"') == 1
    out.write_bytes(data.replace(b'"nonfinite":"allowed"', b'"nonfinite":"refused"'))
    status, stdout, _ = cli(["verify", str(out), "--no-source"])
    assert status == 1
    assert "failed   integrity" in stdout and "non-finite" in stdout


def test_files_without_the_nonfinite_key_still_parse(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    assert cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(out)])[0] == 0
    info = read_output(out)
    assert info.metadata.pop("nonfinite") == "refused"
    assert parse_metadata(info).nonfinite_allowed is False


@pytest.mark.parametrize(
    ("field", "value"), [("model_name", "pythia-12b"), ("tokenizer_name", "EleutherAI/x")]
)
def test_verify_checks_the_naming_fields_against_the_source(
    field: str, value: str, cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    assert cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(out)])[0] == 0
    with safe_open(out, "pt") as handle:
        metadata = dict(handle.metadata())
    cfg = json.loads(metadata["tl_config"])
    cfg[field] = value
    metadata["tl_config"] = json.dumps(cfg)
    save_file(load_file(out), out, metadata=metadata)
    status, stdout, _ = cli(["verify", str(out)])
    assert status == 1
    assert "failed   metadata" in stdout
    assert f"metadata tl_config {field} is {value!r}, expected" in stdout


def test_a_source_folder_whose_name_is_not_utf8_gives_a_readable_file(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/ckpt-\xff\xfe"))
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    out = tmp_path / "out.safetensors"
    status, _, stderr = cli(["convert", str(folder), "-o", str(out)])
    assert status == 0, stderr
    with safe_open(out, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["source"].endswith("ckpt-\\xff\\xfe")
    assert json.loads(metadata["tl_config"])["model_name"] == "ckpt-\\xff\\xfe"
    status, stdout, stderr = cli(["inspect", str(out)])
    assert status == 0, stderr
    status, stdout, stderr = cli(["verify", str(out), str(folder)])
    assert status == 0, stdout + stderr


# --- 3. nothing unbounded ------------------------------------------------------------------


def test_an_index_naming_100k_shards_is_refused_at_once(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    weight_map = {f"t{i}": f"model-{i:06d}-of-100000.safetensors" for i in range(100_000)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="names 100000 shards, more than the 1024 allowed"):
        open_checkpoint(folder)


def test_an_oversized_index_is_refused_before_it_is_read(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = tmp_path / "huge"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    with open(folder / "model.safetensors.index.json", "wb") as handle:
        handle.truncate(17 << 20)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match="larger than the 16777216 allowed"):
        open_checkpoint(folder)


_HUGE = "1" * 5000


@pytest.mark.parametrize("where", ["config.json", "index", "header"])
def test_numbers_of_thousands_of_digits_in_files_give_one_line(
    where: str, cli: Run, ckpt, tmp_path: Path
) -> None:
    folder = ckpt("safetensors-sharded" if where == "index" else "safetensors")
    if where == "config.json":
        path = folder / "config.json"
        path.write_text(path.read_text().replace('"hidden_size": 64', f'"hidden_size": {_HUGE}'))
    elif where == "index":
        path = folder / "model.safetensors.index.json"
        index = json.loads(path.read_text())
        path.write_text(json.dumps(index).replace('"total_size": ', f'"total_size": {_HUGE}'))
    else:
        path = folder / "model.safetensors"
        header = json.dumps({"__metadata__": {}, "x": {"dtype": "F16", "shape": [int(_HUGE[:20])]}})
        header = header.replace(_HUGE[:20], _HUGE)
        path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    line = one_error_line(cli(["convert", str(folder), "-o", str(tmp_path / "o.safetensors")]))
    assert str(path) in line and "too long" in line


def test_metadata_numbers_of_thousands_of_digits_fail_verify_cleanly(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    assert cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(out)])[0] == 0
    with safe_open(out, "pt") as handle:
        metadata = dict(handle.metadata())
    metadata["tl_config"] = metadata["tl_config"].replace('"d_model": 64', f'"d_model": {_HUGE}')
    save_file(load_file(out), out, metadata=metadata)
    status, stdout, stderr = cli(["verify", str(out), "--no-source"])
    assert status == 1 and "Traceback" not in stderr
    assert "metadata 'tl_config' is not valid JSON" in stdout
    line = one_error_line(cli(["inspect", str(out), "--config"]))
    assert "'tl_config' is not valid JSON" in line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--steps", _HUGE], "--steps"),
        (["--steps", f"0:{_HUGE}"], "--steps"),
        (["--steps", "0", "--shard", f"{_HUGE}/2"], "--shard"),
    ],
)
def test_numbers_of_thousands_of_digits_in_flags_give_one_line(
    args: list[str], flag: str, cli: Run, tmp_path: Path
) -> None:
    line = one_error_line(cli(["batch", "pythia-70m", *args, "-o", str(tmp_path)]), code=2)
    assert flag in line


def _bin_checkpoint(ckpt) -> tuple[Path, Path]:
    folder = ckpt("bin")
    return folder, folder / "pytorch_model.bin"


def test_a_compressed_bin_record_is_refused_before_it_is_inflated(
    cli: Run, ckpt, tmp_path: Path
) -> None:
    folder, weights = _bin_checkpoint(ckpt)
    with zipfile.ZipFile(weights) as archive:
        records = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(weights, "w") as archive:
        for info, data in records:
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    line = one_error_line(cli(["convert", str(folder), "-o", str(tmp_path / "o.safetensors")]))
    assert str(weights) in line and "is compressed" in line


def test_a_bin_record_larger_than_its_place_is_refused(cli: Run, ckpt, tmp_path: Path) -> None:
    folder, weights = _bin_checkpoint(ckpt)
    data = bytearray(weights.read_bytes())
    with zipfile.ZipFile(weights) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename)
    # Its central directory entry (the one whose name follows it) claims 1 GB, stored as is.
    name = record.filename.encode()
    entry = data.index(b"PK\x01\x02")
    while data[entry + 46 : entry + 46 + len(name)] != name:
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 20 : entry + 28] = struct.pack("<II", 1 << 30, 1 << 30)
    weights.write_bytes(bytes(data))
    line = one_error_line(cli(["convert", str(folder), "-o", str(tmp_path / "o.safetensors")]))
    assert str(weights) in line and "past the file" in line


# --- 4. a source that changes underneath ---------------------------------------------------

# The CLI, converting one tensor at a time (nothing read ahead), pauses after the first tensor
# is written until the test creates the file "go".
_PAUSING_CLI = """
import contextlib, sys, time
from pathlib import Path
import pythia_tl.cli.convert_cmd as convert_cmd
import pythia_tl.engine.pipeline as pipeline
from pythia_tl.cli import main

folder = Path(sys.argv[1])
pipeline.AHEAD_BYTES = 0

@contextlib.contextmanager
def pausing(label, silent):
    state = {"first": True}
    def on_bytes(n, total):
        if state["first"]:
            state["first"] = False
            (folder / "ready").write_text("")
            while not (folder / "go").exists():
                time.sleep(0.01)
    yield on_bytes

convert_cmd.byte_progress = pausing
main(sys.argv[2:])
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def start_paused(args: list[str], signals: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _PAUSING_CLI, str(signals), *args],
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
    while not (signals / "ready").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the command never reached its first tensor"
        time.sleep(0.02)
    return process


@pytest.mark.parametrize("change", ["truncated", "rewritten", "replaced"])
def test_a_source_changed_during_a_conversion_gives_one_line_and_no_output(
    change: str, ckpt, tmp_path: Path, hf_env: HfEnv
) -> None:
    folder = ckpt()
    weights = folder / "model.safetensors"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    signals = tmp_path / "signals"
    signals.mkdir()
    args = ["convert", str(folder), "-o", str(out_dir / "o.safetensors")]
    process = start_paused(args, signals)
    original = weights.read_bytes()
    if change == "truncated":
        os.truncate(weights, 64)
    elif change == "rewritten":  # same size, same inode, other bytes
        with open(weights, "r+b") as handle:
            handle.seek(len(original) // 2)
            handle.write(bytes(len(original) // 2))
    else:
        replacement = folder / "new"
        replacement.write_bytes(original[: len(original) // 2] + bytes(len(original) // 2))
        replacement.replace(weights)
    (signals / "go").write_text("")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr  # not killed by a signal (SIGBUS: -7)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(weights) in lines[0]
    assert list(out_dir.iterdir()) == []


def test_leaving_the_block_stops_a_running_source_hash(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(4 << 30)  # sparse: hashing it takes seconds, reading it costs no disk
    started = threading.Event()
    real = hashing.file_sha256

    def announcing(path: Path, *stop: threading.Event) -> str:
        started.set()
        return real(path, *stop)

    hashes = hashing.SourceHashes([big])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hashing, "file_sha256", announcing)
        with pytest.raises(KeyboardInterrupt), hashes:
            assert started.wait(60)
            raise KeyboardInterrupt
    # Stopped part-way: without the stop the block would have waited for the whole digest.
    future = hashes._futures["big.bin"]
    assert future.done()
    assert type(future.exception()).__name__ == "HashingStopped"


# --- 6. names from files are data ----------------------------------------------------------


def test_a_tensor_name_with_escape_codes_is_printed_escaped(cli: Run, ckpt, tmp_path: Path) -> None:
    folder = ckpt()
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    tensors["evil\x1b[2J\x1b]0;owned\x07"] = torch.zeros(1, dtype=torch.float16)
    save_file(tensors, weights)
    line = one_error_line(cli(["convert", str(folder), "-o", str(tmp_path / "o.safetensors")]))
    assert "\x1b" not in line and "\x07" not in line
    assert "evil\\x1b[2J\\x1b]0;owned\\x07" in line


def test_a_path_with_a_newline_stays_on_one_line(cli: Run, tmp_path: Path) -> None:
    line = one_error_line(cli(["convert", str(tmp_path / "no\nsuch"), "-o", "x"]), code=2)
    assert "no\\nsuch" in line


def test_inspect_escapes_names_and_metadata(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file(
        {"w\x1b[31mred": torch.zeros(2)}, path, metadata={"source": "[bold]x\x1b]0;title\x07"}
    )
    status, stdout, stderr = cli(["inspect", str(path)])
    assert status == 0, stderr
    assert "\x1b" not in stdout and "\x07" not in stdout
    assert "w\\x1b[31mred" in stdout and "[bold]x\\x1b]0;title\\x07" in stdout


# --- 7. long names -------------------------------------------------------------------------


def test_an_output_name_at_the_file_system_limit_works(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / ("x" * (name_max - len(".safetensors")) + ".safetensors")
    status, _, stderr = cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target)])
    assert status == 0, stderr
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_shortened_temporary_name_is_still_recognised_as_stale(tmp_path: Path) -> None:
    target = tmp_path / ("é" * 200 + ".safetensors")  # 412 bytes of name: over the limit
    temp = temp_path_for(target)
    assert len(os.fsencode(temp.name)) <= os.pathconf(tmp_path, "PC_NAME_MAX")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a process that is gone: its temporary file is stale
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "getpid", lambda: dead.pid)
        stale = temp_path_for(target)
    assert len(os.fsencode(stale.name)) <= os.pathconf(tmp_path, "PC_NAME_MAX")
    stale.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [stale]


def test_a_source_file_that_cannot_be_read_for_its_hash_is_named_as_the_source(
    tmp_path: Path,
) -> None:
    # Not an OSError: the writer, waiting on the hashes, would report it as its own failure.
    with pytest.raises(SourceError, match="cannot read for its sha256"):
        hashing.file_sha256(tmp_path)  # a folder: reading it fails as EIO would
