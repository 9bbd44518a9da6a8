"""The Hub as harsh as the real one: resolver quotas, expiring locations, latency, dropped and
drip-fed connections, and storage answers that are not what was asked (against the stand-in
Hub, over real HTTP)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch
from conftest import HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub
from synthetic import LAYOUTS, PythiaShape, write_checkpoint
from test_remote import assert_same_tensors

import pythia_tl.hub.stream_reader as stream_reader
from pythia_tl.errors import SourceError
from pythia_tl.hub.remote import RemoteFile
from pythia_tl.hub.stream_reader import StreamReader
from pythia_tl.hub.transport import StorageClient
from pythia_tl.source import resolve_source
from pythia_tl.source.checkpoint import open_checkpoint
from pythia_tl.source.reader import TensorReader
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES

REPO = "EleutherAI/pythia-70m"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def small_files(folder: Path) -> list[str]:
    """What a conversion downloads whole: config.json, an index, the tokenizer files."""
    names = ["config.json", *TOKENIZER_FILES]
    names += [p.name for p in folder.glob("*.index.json")]
    return [name for name in names if (folder / name).is_file()]


def resolves_needed(folder: Path) -> int:
    """One resolve per weight file; huggingface_hub's HEAD and GET per small file."""
    return len(weight_files(folder)) + 2 * len(small_files(folder))


@pytest.fixture
def local(tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path) -> dict[str, Path]:
    """Local conversions of the tiny checkpoints, made on demand."""

    class Lazy(dict[str, Path]):
        def __missing__(self, layout: str) -> Path:
            out = tmp_path / f"local-{layout}.safetensors"
            status, _, stderr = cli(["convert", str(tiny_checkpoints[layout]), "-o", str(out)])
            assert status == 0, stderr
            self[layout] = out
            return out

    return Lazy()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_streamed_conversion_resolves_each_weight_file_once(
    layout: str,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    local: dict[str, Path],
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints[layout]
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    out = tmp_path / "out.safetensors"
    status, _, stderr = cli(["convert", REPO, "-o", str(out)])
    assert status == 0, stderr
    assert_same_tensors(out, local[layout])
    # Each file read by many ranges, yet resolved once.
    cdn = [r for r in stand_in_hub.records if r.server == "cdn"]
    assert len(cdn) >= len(weight_files(folder))
    assert stand_in_hub.resolver_requests == resolves_needed(folder)


def test_a_conversion_within_a_small_quota_meets_no_429(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    local: dict[str, Path],
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints["bin-sharded"]
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.set_resolver_quota(resolves_needed(folder), window=60)
    stand_in_hub.clear_requests()
    out = tmp_path / "out.safetensors"
    status, _, stderr = cli(["convert", REPO, "-o", str(out)])
    assert status == 0, stderr
    assert stand_in_hub.rate_limited == 0
    assert_same_tensors(out, local["bin-sharded"])


def test_a_quota_met_midway_is_waited_out_and_said_once(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    local: dict[str, Path],
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints["safetensors-sharded"]
    assert len(weight_files(folder)) >= 3
    stand_in_hub.add_revision(REPO, "main", folder)
    # The small files and one shard fit in the window; the other shards wait for the next.
    stand_in_hub.set_resolver_quota(2 * len(small_files(folder)) + 1, window=1.0)
    out = tmp_path / "out.safetensors"
    status, _, stderr = cli(["convert", REPO, "-o", str(out)])
    assert status == 0, stderr
    assert stand_in_hub.rate_limited >= 1
    notes = [line for line in stderr.splitlines() if "rate-limiting" in line]
    assert len(notes) == 1 and notes[0].startswith("note: "), stderr
    assert_same_tensors(out, local["safetensors-sharded"])


@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded"])
def test_a_location_expiring_mid_stream_is_resolved_again(
    layout: str,
    tiny_checkpoints: TinyCheckpoints,
    hf_env: HfEnv,
    cli: Run,
    local: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tiny_checkpoints[layout]
    # Small pieces over a slow, distant link: the stream outlives its signed location.
    monkeypatch.setattr(stream_reader, "PIECE_BYTES", 8 << 10)
    with StandInHub(bytes_per_second=200e3, latency=0.02, location_ttl=0.3) as hub:
        hf_env.set_endpoint(hub.url)
        hf_env.set_offline(False)
        hub.add_revision(REPO, "main", folder)
        out = tmp_path / "out.safetensors"
        status, _, stderr = cli(["convert", REPO, "-o", str(out)])
        assert status == 0, stderr
        assert hub.expired >= 1
        assert hub.resolver_requests <= resolves_needed(folder) + hub.expired
    assert_same_tensors(out, local[layout])


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_a_dropped_connection_resumes_from_its_last_byte(
    layout: str, tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub
) -> None:
    folder = tiny_checkpoints[layout]
    (path,) = weight_files(folder)
    stand_in_hub.add_revision(REPO, "main", folder)
    checkpoint = resolve_source(REPO).checkpoint  # headers read, nothing broken yet
    size = path.stat().st_size
    stand_in_hub.clear_requests()
    stand_in_hub.break_file(REPO, path.name, kind="truncate", offset=size // 2, times=1)
    with (
        StreamReader(checkpoint, checkpoint.tensors, whole_files=True) as reader,
        TensorReader(open_checkpoint(folder)) as on_disk,
    ):
        for name in reader.order:
            assert torch.equal(reader.read(name), on_disk.read(name)), name
            reader.release(name)
        digests = reader.digests()
    assert digests[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The first half once, then the rest from where it broke off: every byte exactly once.
    assert stand_in_hub.served_bytes(path.name) == size
    cdn = [r for r in stand_in_hub.records if r.server == "cdn"]
    assert [r.range for r in cdn] == [f"bytes=0-{size - 1}", f"bytes={size // 2}-{size - 1}"]


def assert_convert_refused(cli: Run, tmp_path: Path, expected: str) -> None:
    """A streamed conversion of REPO fails in one line naming model.safetensors and saying
    ``expected``, and writes nothing."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    status, _, stderr = cli(["convert", REPO, "-o", str(outputs / "out.safetensors")])
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors" in lines[0] and expected in lines[0], stderr
    assert list(outputs.iterdir()) == []


@pytest.mark.parametrize("kind", ["long", "short", "wrong_range", "no_range"])
def test_a_storage_answer_other_than_asked_is_refused_naming_file_and_range(
    kind: str,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints["safetensors"]
    stand_in_hub.add_revision(REPO, "main", folder)
    # A body far longer than asked must not be read, let alone held.
    offset = {"long": 1 << 30, "short": 8, "wrong_range": 64, "no_range": 0}[kind]
    stand_in_hub.break_file(REPO, "model.safetensors", kind=kind, offset=offset)
    assert_convert_refused(cli, tmp_path, "bytes")
    assert stand_in_hub.served_bytes("model.safetensors") < (4 << 20)


LIES = {
    "size": ({"X_Linked_Size": "12345"}, "reports 12345 bytes, but listed"),
    "sha256": ({"X_Linked_Etag": '"' + "ab" * 32 + '"'}, "is not the sha256 it listed"),
    "commit": ({"X_Repo_Commit": "cd" * 20}, "not the commit it listed"),
    "scheme": ({"Location": "file:///etc/passwd"}, "not HTTP(S)"),
}


@pytest.mark.parametrize("lie", LIES)
def test_a_resolve_answer_that_contradicts_the_listing_is_refused(
    lie: str,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints["safetensors"]
    stand_in_hub.add_revision(REPO, "main", folder)
    headers, expected = LIES[lie]
    stand_in_hub.lie_on_resolve(REPO, "model.safetensors", **headers)
    assert_convert_refused(cli, tmp_path, expected)
    assert stand_in_hub.served_bytes("model.safetensors") == 0


def test_a_drip_feed_is_given_up_on(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub
) -> None:
    folder = tiny_checkpoints["safetensors"]
    commit = stand_in_hub.add_revision(REPO, "main", folder)
    size = (folder / "model.safetensors").stat().st_size
    stand_in_hub.break_file(REPO, "model.safetensors", kind="drip", offset=100)
    file = RemoteFile(
        REPO,
        commit,
        "model.safetensors",
        size,
        client=StorageClient(timeout=0.5),
        sleep=lambda seconds: None,
    )
    with pytest.raises(SourceError, match=r"model\.safetensors.*KiB/s"):
        file.read_into(0, [memoryview(bytearray(size))])


def test_closing_the_client_ends_a_read_under_way(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub
) -> None:
    folder = tiny_checkpoints["safetensors"]
    commit = stand_in_hub.add_revision(REPO, "main", folder)
    size = (folder / "model.safetensors").stat().st_size
    stand_in_hub.break_file(REPO, "model.safetensors", kind="drip", offset=100_000)
    client = StorageClient(timeout=30)
    file = RemoteFile(REPO, commit, "model.safetensors", size, client=client)
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            file.read_into(0, [memoryview(bytearray(size))], stop)
        except SourceError as exc:
            failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.5)
    stop.set()
    client.close()
    reader.join(5)
    assert not reader.is_alive()
    assert failures and "stopped" in str(failures[0])


@pytest.mark.parametrize(
    ("layout", "piece", "ahead"),
    [
        ("safetensors", 16 << 20, 1),
        ("bin", 16 << 20, 1),
        ("safetensors", 4 << 10, 24 << 10),
        ("bin", 4 << 10, 24 << 10),
        ("safetensors", 4 << 10, 1),
        ("bin", 4 << 10, 1),
    ],
)
def test_a_tight_budget_streams_past_skipped_buffers(
    layout: str,
    piece: int,
    ahead: int,
    stand_in_hub: StandInHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The old transformers' buffers lie between the weights, read whole for the hash but into
    # scratch memory; a tensor after one must still be given room however small the budget,
    # and so must the scratch after a tensor larger than the budget, in the piece that ends it.
    monkeypatch.setattr(stream_reader, "PIECE_BYTES", piece)
    folder = tmp_path / "src"
    write_checkpoint(
        folder,
        PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=512),
        layout=layout,
        legacy_buffers="always",
    )
    stand_in_hub.add_revision(REPO, "main", folder)
    checkpoint = resolve_source(REPO).checkpoint
    names = [n for n in checkpoint.tensors if not n.endswith(("attention.bias", "masked_bias"))]
    names = [n for n in names if "rotary_emb" not in n]
    assert len(names) < len(checkpoint.tensors)
    got: list[str] = []

    def read_all() -> None:
        with StreamReader(checkpoint, names, whole_files=True, ahead=ahead) as reader:
            for name in reader.order:
                reader.read(name)
                reader.release(name)
                got.append(name)

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"stalled after {len(got)} of {len(names)} tensors"
    assert sorted(got) == sorted(names)


def test_a_stream_reuses_the_memory_of_the_tensors_let_go(
    tmp_path: Path, stand_in_hub: StandInHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Layers of tensors above the pool's 1 MiB floor, embeddings above half of the largest; one
    # tensor fetched ahead at a time in pieces smaller than a tensor, as when tensors are larger
    # than the budget and the pieces (pythia-12b).
    monkeypatch.setattr(stream_reader, "PIECE_BYTES", 256 << 10)
    folder = tmp_path / "src"
    shape = PythiaShape(n_layers=3, d_model=512, n_heads=4, d_vocab=8192)
    write_checkpoint(folder, shape, layout="safetensors")
    stand_in_hub.add_revision(REPO, "main", folder)
    checkpoint = resolve_source(REPO).checkpoint
    largest = max(info.span.nbytes for info in checkpoint.tensors.values() if info.span)
    memory: dict[int, list[str]] = {}
    with (
        StreamReader(checkpoint, checkpoint.tensors, whole_files=True, ahead=1) as reader,
        TensorReader(open_checkpoint(folder)) as on_disk,
    ):
        for name in reader.order:
            tensor = reader.read(name)
            assert torch.equal(tensor, on_disk.read(name)), name
            if 1 << 20 <= tensor.nbytes <= largest // 2:
                memory.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
            del tensor
            reader.release(name)
    pooled = sum(len(names) for names in memory.values())
    assert pooled >= 3 * 3  # query_key_value and both MLP weights of every layer
    assert len(memory) <= 4, memory  # the same few buffers, two at a time at most
