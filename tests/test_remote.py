"""Hub sources read by byte ranges: headers without downloads, conversion while the bytes arrive,
only the bytes asked for, and the faults of a network (all against the stand-in Hub)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub
from safetensors import safe_open
from safetensors.torch import load_file
from synthetic import LAYOUTS, PythiaShape, write_checkpoint

from pythia_tl.hub.stream_reader import StreamReader
from pythia_tl.output.metadata import read_output
from pythia_tl.source import resolve_source

REPO = "EleutherAI/pythia-70m"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_on_disk(root: Path) -> list[Path]:
    """Weight files (or blobs of them) stored under ``root`` (blobs are named by sha256)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            big = path.stat().st_size > 4096
            if path.name.endswith(WEIGHT_SUFFIXES) or (path.parent.name == "blobs" and big):
                found.append(path)
    return found


def assert_same_tensors(got: Path, expected: Path) -> None:
    """The two files hold the same keys, in the same order, with equal tensors."""
    want, have = tensors_of(expected), tensors_of(got)
    assert list(have) == list(want)
    for key, tensor in want.items():
        assert torch.equal(have[key], tensor), key


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def header_bytes(folder: Path) -> int:
    """What a reader must fetch to learn the tensors: safetensors headers (8 + N bytes)."""
    total = 0
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as handle:
            total += 8 + int.from_bytes(handle.read(8), "little")
    return total


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("process", [False, True], ids=["raw", "processed"])
def test_a_streamed_conversion_equals_the_local_one_and_stores_no_weights(
    layout: str,
    process: bool,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    stand_in_hub.add_revision(REPO, "step1000", tiny_checkpoints[layout])
    flags = ["--process"] if process else []
    local, streamed = tmp_path / "local.safetensors", tmp_path / "streamed.safetensors"
    assert cli(["convert", str(tiny_checkpoints[layout]), "-o", str(local), *flags])[0] == 0
    status, _, stderr = cli(["convert", REPO, "--step", "1000", "-o", str(streamed), *flags])
    assert status == 0, stderr
    assert_same_tensors(streamed, local)
    assert weights_on_disk(hf_env.cache) == []
    # The sha256 recorded is the one the Hub announced, computed from the stream.
    recorded = read_output(streamed).source_files
    assert recorded == read_output(local).source_files
    assert stand_in_hub.served_bytes() >= sum(
        p.stat().st_size
        for p in tiny_checkpoints[layout].iterdir()
        if p.suffix in (".bin", ".safetensors")
    )


@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded"])
def test_plan_fetches_headers_only(
    layout: str,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "big"
    shape = PythiaShape(n_layers=2, d_model=256, n_heads=4, d_vocab=4096)  # ~ 7 MB of weights
    write_checkpoint(folder, shape, layout=layout, shard_bytes=2 << 20)
    # A Pythia repository's tokenizer.json is about 2 MB: a plan has no use for it.
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": "x" * (2 << 20)}}))
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    status, stdout, stderr = cli(["plan", REPO, "--json"])
    assert status == 0, stderr
    assert len(json.loads(stdout)["tensors"]) == 16 * 2 + 5
    weights = [p for p in folder.iterdir() if p.suffix in (".bin", ".safetensors")]
    fetched = sum(stand_in_hub.served_bytes(p.name) for p in weights)
    assert fetched <= header_bytes(folder) + (1 << 20)
    assert fetched < sum(p.stat().st_size for p in weights) / 5
    assert stand_in_hub.served_bytes() <= header_bytes(folder) + (1 << 20)  # every file
    assert weights_on_disk(hf_env.cache) == []


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin"])
def test_tensors_fetches_only_the_selected_bytes(
    layout: str, stand_in_hub: StandInHub, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "big"
    shape = PythiaShape(n_layers=3, d_model=256, n_heads=4, d_vocab=4096)
    write_checkpoint(folder, shape, layout=layout, shard_bytes=2 << 20)
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    out = tmp_path / "embed.safetensors"
    status, _, stderr = cli(["convert", REPO, "--tensors", "embed.W_E", "-o", str(out)])
    assert status == 0, stderr
    selected = shape.d_vocab * shape.d_model * 2  # float16
    weights = [p for p in folder.iterdir() if p.suffix in (".bin", ".safetensors")]
    fetched = sum(stand_in_hub.served_bytes(p.name) for p in weights)
    assert selected <= fetched <= 1.05 * selected + header_bytes(folder) + (1 << 20)
    with safe_open(out, "pt") as handle:
        assert list(handle.keys()) == ["embed.W_E"]
        assert json.loads(handle.metadata()["selection"]) == {
            "tensors": ["embed.W_E"],
            "layers": None,
        }
    assert cli(["verify", str(out)])[0] == 0
    assert weights_on_disk(hf_env.cache) == []


def test_a_partial_stream_sends_shards_in_the_order_they_are_read(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, hf_env: HfEnv, tmp_path: Path
) -> None:
    # The Hub's index files list their keys sorted, so embed_out.weight, in the last shard, comes
    # first: the shard read first is not the first by name. A stream sending shards by name
    # would fill its look-ahead with the tensor read second and wait for the reader for ever.
    folder = tmp_path / "sorted-index"
    shutil.copytree(tiny_checkpoints["safetensors-sharded"], folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps(index, sort_keys=True))
    stand_in_hub.add_revision(REPO, "main", folder)
    checkpoint = resolve_source(REPO, tokenizer=False).checkpoint
    names = ["gpt_neox.embed_in.weight", "embed_out.weight"]
    assert checkpoint.tensors[names[0]].file != checkpoint.tensors[names[1]].file
    expected = {name: load_file(folder / index["weight_map"][name])[name] for name in names}
    got: dict[str, torch.Tensor] = {}

    def read_all(reader: StreamReader) -> None:
        for name in reader.order:
            got[name] = reader.read(name).clone()
            reader.release(name)

    with StreamReader(checkpoint, names, whole_files=False, ahead=1) as reader:
        assert reader.order[0] == "embed_out.weight"
        worker = threading.Thread(target=read_all, args=(reader,), daemon=True)
        worker.start()
        worker.join(timeout=30)
        stuck = worker.is_alive()
    assert not stuck
    assert all(torch.equal(got[name], expected[name]) for name in names)


def test_a_dropped_connection_resumes(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub, cli: Run, tmp_path: Path
) -> None:
    folder = tiny_checkpoints["safetensors"]
    stand_in_hub.add_revision(REPO, "main", folder)
    size = (folder / "model.safetensors").stat().st_size
    stand_in_hub.break_file(REPO, "model.safetensors", kind="truncate", offset=size // 2, times=1)
    out = tmp_path / "out.safetensors"
    status, _, stderr = cli(["convert", REPO, "-o", str(out)])
    assert status == 0, stderr
    local = tmp_path / "local.safetensors"
    assert cli(["convert", str(folder), "-o", str(local)])[0] == 0
    assert tensors_of(out).keys() == tensors_of(local).keys()
    assert all(torch.equal(tensors_of(out)[k], v) for k, v in tensors_of(local).items())


def test_a_corrupt_byte_fails_the_sha256_check_and_publishes_nothing(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub, cli: Run, tmp_path: Path
) -> None:
    folder = tiny_checkpoints["bin"]
    stand_in_hub.add_revision(REPO, "main", folder)
    size = (folder / "pytorch_model.bin").stat().st_size
    stand_in_hub.break_file(REPO, "pytorch_model.bin", kind="corrupt", offset=size // 2)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    status, _, stderr = cli(["convert", REPO, "-o", str(outputs / "out.safetensors")])
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and "pytorch_model.bin" in lines[0], stderr
    assert list(outputs.iterdir()) == []


def test_keep_downloads_leaves_the_files_in_the_cache_and_a_rerun_reads_them(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints["safetensors-sharded"]
    stand_in_hub.add_revision(REPO, "main", folder)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli(["convert", REPO, "--keep-downloads", "-o", str(first)])[0] == 0
    snapshot = next((hf_env.cache / "models--EleutherAI--pythia-70m" / "snapshots").iterdir())
    for shard in folder.glob("*.safetensors"):
        assert (snapshot / shard.name).read_bytes() == shard.read_bytes()
    stand_in_hub.clear_requests()
    assert cli(["convert", REPO, "-o", str(second)])[0] == 0
    assert stand_in_hub.served_bytes() == 0  # weights read from the cache
    assert first.read_bytes() == second.read_bytes()


def test_a_revision_partly_in_the_cache_is_streamed_whole(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    # What an interrupted --keep-downloads leaves: one shard cached, the others not.
    from huggingface_hub import hf_hub_download

    folder = tiny_checkpoints["safetensors-sharded"]
    stand_in_hub.add_revision(REPO, "main", folder)
    first_shard = sorted(p.name for p in folder.glob("*.safetensors"))[0]
    hf_hub_download(REPO, first_shard)
    local, streamed = tmp_path / "local.safetensors", tmp_path / "streamed.safetensors"
    assert cli(["convert", str(folder), "-o", str(local)])[0] == 0
    status, _, stderr = cli(["convert", REPO, "-o", str(streamed)])
    assert status == 0, stderr
    assert_same_tensors(streamed, local)


def test_kill_9_while_streaming_leaves_nothing_at_the_output(
    tiny_checkpoints: TinyCheckpoints, hf_env: HfEnv, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    write_checkpoint(
        folder, PythiaShape(n_layers=2, d_model=256, n_heads=4, d_vocab=4096), layout="safetensors"
    )
    # A slow link, so that the conversion is still running when it is killed.
    with StandInHub(bytes_per_second=2e6) as hub:
        hub.add_revision(REPO, "main", folder)
        hf_env.set_endpoint(hub.url)
        hf_env.set_offline(False)
        out = tmp_path / "out.safetensors"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        child = subprocess.Popen(
            [sys.executable, "-m", "pythia_tl", "convert", REPO, "-o", str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while hub.served_bytes() < 1 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert hub.served_bytes() >= 1 << 20
    assert not out.exists()
    assert weights_on_disk(hf_env.cache) == []


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin"])
def test_verify_streams_the_recorded_commit(
    layout: str,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints[layout])
    out = tmp_path / "out.safetensors"
    assert cli(["convert", REPO, "-o", str(out), "-q"])[0] == 0
    # main moves on: verification streams the commit that was converted, and stores nothing.
    other = tmp_path / "other"
    write_checkpoint(other, tiny_checkpoints.shape, layout="safetensors", seed=5)
    stand_in_hub.add_revision(REPO, "main", other)
    status, stdout, stderr = cli(["verify", str(out), "--json"])
    assert (status, stderr) == (0, ""), stderr
    assert json.loads(stdout)["ok"] is True
    assert weights_on_disk(hf_env.cache) == []


def test_a_remote_bin_cannot_make_the_header_read_unbounded(
    stand_in_hub: StandInHub, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    """A .bin whose end-of-central-directory record declares a directory of 100 MB: the header
    read refuses it instead of fetching (and holding) that much."""
    folder = tmp_path / "hostile"
    write_checkpoint(
        folder, PythiaShape(n_layers=1, d_model=32, n_heads=2, d_vocab=64), layout="bin"
    )
    weights = folder / "pytorch_model.bin"
    data = bytearray(weights.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 12 : eocd + 16] = (100 << 20).to_bytes(4, "little")  # size of the directory
    data[eocd + 16 : eocd + 20] = (0).to_bytes(4, "little")  # where it starts
    # 120 MB of room before the record, so that the "directory" lies within the file.
    weights.write_bytes(bytes(data[:eocd]) + bytes(120 << 20) + bytes(data[eocd:]))
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    status, _, stderr = cli(["plan", REPO])
    assert status == 1, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stand_in_hub.served_bytes("pytorch_model.bin") < 20 << 20
