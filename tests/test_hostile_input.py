"""Hostile input: pickles that would run code, safetensors headers that lie, indexes that point
elsewhere, absurd configs. Each is refused with one clear error before it can do harm."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, Run, TinyCheckpoints

from pythia_tl.errors import CheckpointError, ConfigError
from pythia_tl.source.checkpoint import open_checkpoint


def copy_of(tiny: TinyCheckpoints, layout: str, folder: Path) -> Path:
    shutil.copytree(tiny[layout], folder)
    return folder


def assert_one_line(result: tuple[int, str, str], *fragments: str) -> None:
    status, stdout, stderr = result
    assert (status, stdout) == (1, ""), stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- pickles that would run code ----------------------------------------------------------


class _Call:
    """Pickles as a call of ``function(*args)``: what a malicious checkpoint does."""

    def __init__(self, function: Callable[..., object], *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, _Call]:
    """Calls that would each create ``marker``, proof that code ran."""
    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "builtins.exec": _Call(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.open": _Call(open, str(marker), "w"),
        "subprocess.call": _Call(subprocess.call, ["touch", str(marker)]),
    }


def _torch_zip_with(state: dict[str, object], path: Path) -> None:
    torch.save(state, path)
    assert zipfile.is_zipfile(path)


def _torch_zip_with_raw_pickle(payload: bytes, valid: Path, path: Path) -> None:
    """A valid torch zip archive whose data.pkl is replaced by ``payload``."""
    with zipfile.ZipFile(valid) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = payload if item.filename.endswith("/data.pkl") else source.read(item)
            target.writestr(item, data)


@pytest.mark.parametrize(
    "function", ["os.system", "builtins.exec", "builtins.open", "subprocess.call"]
)
@pytest.mark.parametrize(
    "packaging", ["torch zip", "zip with a raw data.pkl", "legacy torch", "bare pickle"]
)
def test_a_bin_that_would_run_code_is_refused_and_never_runs(
    function: str,
    packaging: str,
    cli: Run,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
) -> None:
    folder = copy_of(tiny_checkpoints, "bin", tmp_path / "src")
    weights = folder / "pytorch_model.bin"
    marker = tmp_path / "code-ran"
    payload = _payloads(marker)[function]
    state: dict[str, object] = dict(torch.load(weights, weights_only=True))
    state["gpt_neox.embed_in.weight"] = payload
    if packaging == "torch zip":
        _torch_zip_with(state, weights)
    elif packaging == "zip with a raw data.pkl":
        valid = tmp_path / "valid.bin"
        shutil.copy(weights, valid)
        _torch_zip_with_raw_pickle(pickle.dumps(payload, protocol=2), valid, weights)
    elif packaging == "legacy torch":
        torch.save(state, weights, _use_new_zipfile_serialization=False)
    else:
        weights.write_bytes(pickle.dumps(payload))
    out = tmp_path / "out.safetensors"
    assert_one_line(cli(["convert", str(folder), "-o", str(out)]), str(weights))
    assert not marker.exists()
    assert not out.exists()


def test_a_malicious_second_shard_is_refused(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "bin-sharded", tmp_path / "src")
    shard = sorted(folder.glob("pytorch_model-*.bin"))[-1]
    marker = tmp_path / "code-ran"
    state: dict[str, object] = dict(torch.load(shard, weights_only=True))
    state[next(iter(state))] = _payloads(marker)["os.system"]
    torch.save(state, shard)
    assert_one_line(cli(["convert", str(folder), "-o", str(tmp_path / "o")]), shard.name, "refused")
    assert not marker.exists()


# --- safetensors headers that lie ---------------------------------------------------------


def _safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


TERABYTE = 1 << 40
HOSTILE_HEADERS: dict[str, bytes] = {
    "empty file": b"",
    "shorter than its length field": b"\x10\x00\x00",
    "header length 2**63": _safetensors({}, length=1 << 63),
    "header length of a terabyte": _safetensors({}, length=TERABYTE),
    "header length past the end": _safetensors({"a": _entry("F32", [2], 0, 8)}, b"\0" * 8, 4096),
    "a terabyte tensor in a kilobyte": _safetensors(
        {"a": _entry("F32", [TERABYTE // 4], 0, TERABYTE)}, b"\0" * 1024
    ),
    "offsets past the end": _safetensors({"a": _entry("F32", [4], 0, 16)}, b"\0" * 8),
    "overlapping tensors": _safetensors(
        {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, b"\0" * 12
    ),
    "the same bytes twice": _safetensors(
        {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 0, 8)}, b"\0" * 8
    ),
    "a gap between tensors": _safetensors(
        {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, b"\0" * 12
    ),
    "trailing bytes": _safetensors({"a": _entry("F32", [2], 0, 8)}, b"\0" * 16),
    "offsets reversed": _safetensors({"a": _entry("F32", [0], 8, 0)}, b"\0" * 8),
    "unknown dtype": _safetensors({"a": _entry("X99", [2], 0, 8)}, b"\0" * 8),
    "unsupported dtype": _safetensors({"a": _entry("F8_E4M3", [8], 0, 8)}, b"\0" * 8),
    "shape larger than its bytes": _safetensors({"a": _entry("F32", [3], 0, 8)}, b"\0" * 8),
    "shape smaller than its bytes": _safetensors({"a": _entry("F32", [1], 0, 8)}, b"\0" * 8),
    "negative shape": _safetensors({"a": _entry("F32", [-2], 0, 8)}, b"\0" * 8),
    "shape of booleans": _safetensors({"a": _entry("F32", [True, True], 0, 4)}, b"\0" * 4),
    "shape that overflows 64 bits": _safetensors(
        {"a": _entry("F32", [1 << 62, 1 << 62], 0, 8)}, b"\0" * 8
    ),
    "shape of two thousand huge dimensions": _safetensors(
        {"a": _entry("F32", [1 << 62] * 2000, 0, 8)}, b"\0" * 8
    ),
    "offsets that are not integers": _safetensors(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8.0]}}, b"\0" * 8
    ),
    "metadata that is not text": _safetensors(
        {"__metadata__": {"format": 1}, "a": _entry("F32", [2], 0, 8)}, b"\0" * 8
    ),
    "header that is a list": _safetensors([1, 2, 3]),
    "header that is not JSON": _safetensors(b"{not json"),
    "header that is not UTF-8": _safetensors(b'{"\xff\xfe": 1}'),
    "header nested a hundred thousand deep": _safetensors(b"[" * 100_000 + b"]" * 100_000),
    "a name given twice": _safetensors(
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        b"\0" * 8,
    ),
}

# Run in a child process whose address space is capped at what it uses plus 1 GiB: a parser that
# sized an allocation from a lying header would fail with MemoryError instead of CheckpointError.
_PARSE_UNDER_A_MEMORY_CAP = """
import json, resource, sys
from pathlib import Path
from pythia_tl.errors import CheckpointError
from pythia_tl.source.checkpoint import open_checkpoint

def address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

cap = address_space() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
results = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    try:
        open_checkpoint(folder)
        results[folder.name] = ["accepted", ""]
    except CheckpointError as exc:
        results[folder.name] = ["CheckpointError", str(exc)]
    except BaseException as exc:
        results[folder.name] = [type(exc).__name__, str(exc)[:300]]
print(json.dumps(results))
"""


def open_in_a_child(root: Path) -> dict[str, tuple[str, str]]:
    """open_checkpoint on every folder in ``root``, in one child process with capped memory:
    folder name -> (exception name or "accepted", message)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to size the memory cap")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    try:
        # The timeout only turns a hang (a parser blocked on a FIFO, reading /dev/zero) into a
        # failure instead of a stuck test run; it is far above the time the work takes.
        child = subprocess.run(
            [sys.executable, "-c", _PARSE_UNDER_A_MEMORY_CAP, str(root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"opening the checkpoints in {root} never finished")
    assert child.returncode == 0, child.stderr
    return {folder: (kind, message) for folder, (kind, message) in json.loads(child.stdout).items()}


@pytest.fixture(scope="module")
def header_verdicts(
    tiny_checkpoints: TinyCheckpoints, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str, Path]]:
    """Each hostile header as the model.safetensors of an otherwise sound checkpoint, opened in
    one capped child process: case -> (exception name, message, weights path)."""
    root = tmp_path_factory.mktemp("hostile-headers")
    config = (tiny_checkpoints["safetensors"] / "config.json").read_bytes()
    names = {}
    for index, (case, content) in enumerate(HOSTILE_HEADERS.items()):
        folder = root / f"case-{index:02d}"
        folder.mkdir()
        (folder / "config.json").write_bytes(config)
        (folder / "model.safetensors").write_bytes(content)
        names[folder.name] = case
    return {
        names[folder]: (kind, message, root / folder / "model.safetensors")
        for folder, (kind, message) in open_in_a_child(root).items()
    }


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_a_lying_safetensors_header_is_refused_without_allocating(
    case: str, header_verdicts: dict[str, tuple[str, str, Path]]
) -> None:
    kind, message, weights = header_verdicts[case]
    assert kind == "CheckpointError", f"{kind}: {message}"
    assert message.startswith(f"{weights}: "), message
    assert "\n" not in message


def test_a_lying_header_is_one_line_from_the_cli(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors", tmp_path / "src")
    weights = folder / "model.safetensors"
    weights.write_bytes(HOSTILE_HEADERS["a terabyte tensor in a kilobyte"])
    assert_one_line(cli(["convert", str(folder), "-o", str(tmp_path / "o")]), str(weights))


# --- indexes that point elsewhere ---------------------------------------------------------


def _point_index(folder: Path, index_name: str, shard: str) -> None:
    index_path = folder / index_name
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize(
    "escape",
    ["../outside.safetensors", "/etc/hostname", "sub/../../x.safetensors", "..", ".", "", "a\0b"],
)
def test_an_index_naming_a_file_outside_the_folder_is_refused(
    escape: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors-sharded", tmp_path / "src")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    _point_index(folder, "model.safetensors.index.json", escape)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json"):
        open_checkpoint(folder)


def test_a_shard_linking_outside_the_folder_is_refused(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors-sharded", tmp_path / "src")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    outside = tmp_path / "outside.safetensors"
    shard.rename(outside)
    # Through a second link inside the folder, to show the whole chain is followed.
    (folder / "hop.safetensors").symlink_to(outside)
    shard.symlink_to(folder / "hop.safetensors")
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        open_checkpoint(folder)


def test_a_single_weights_file_linking_outside_the_folder_is_refused(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors", tmp_path / "src")
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        open_checkpoint(folder)


def test_a_shard_that_is_a_folder_is_refused(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors-sharded", tmp_path / "src")
    (folder / "sub").mkdir()
    _point_index(folder, "model.safetensors.index.json", "sub")
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json"):
        open_checkpoint(folder)


def test_weights_and_indexes_that_are_not_regular_files_are_refused_without_reading_them(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    root = tmp_path / "cases"
    single = copy_of(tiny_checkpoints, "safetensors", root / "fifo-weights")
    (single / "model.safetensors").unlink()
    os.mkfifo(single / "model.safetensors")  # opening it for reading waits for a writer
    sharded = copy_of(tiny_checkpoints, "safetensors-sharded", root / "endless-index")
    index = sharded / "model.safetensors.index.json"
    index.unlink()
    index.symlink_to("/dev/zero")  # reading it never ends
    verdicts = open_in_a_child(root)
    assert verdicts["fifo-weights"] == (
        "CheckpointError",
        f"{single / 'model.safetensors'}: model.safetensors is not a regular file",
    )
    assert verdicts["endless-index"] == ("CheckpointError", f"{index}: not a regular file")


def test_an_index_nested_too_deeply_is_refused(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors-sharded", tmp_path / "src")
    (folder / "model.safetensors.index.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(CheckpointError, match="not a readable JSON index"):
        open_checkpoint(folder)


# --- absurd configs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"num_attention_heads": 0}, "num_attention_heads is 0"),
        ({"num_attention_heads": -4}, "num_attention_heads is -4"),
        ({"num_attention_heads": 5}, "not divisible by num_attention_heads 5"),
        ({"num_hidden_layers": 2_000_000_000}, "num_hidden_layers is 2000000000"),
        ({"num_hidden_layers": -1}, "num_hidden_layers is -1"),
        ({"hidden_size": 10**30}, "hidden_size is"),
        ({"hidden_size": 64.0}, "hidden_size is 64.0"),
        ({"hidden_size": "64"}, "hidden_size is '64'"),
        ({"hidden_size": True}, "hidden_size is True"),
        ({"vocab_size": 10**12}, "vocab_size is 1000000000000"),
        ({"intermediate_size": 0}, "intermediate_size is 0"),
        ({"max_position_embeddings": 0}, "max_position_embeddings is 0"),
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps is nan"),
        ({"layer_norm_eps": float("inf")}, "layer_norm_eps is inf"),
        ({"layer_norm_eps": -1e-5}, "layer_norm_eps is -1e-05"),
        ({"rotary_pct": 1.5}, "rotary_pct is 1.5"),
        ({"rotary_pct": 0.3}, "rotary_pct 0.3 of head size 16 gives 4.8 rotary dimensions"),
        ({"rotary_emb_base": float("inf")}, "rotary_emb_base is inf"),
        ({"rotary_emb_base": 0}, "rotary_emb_base is 0"),
        ({"use_parallel_residual": "yes"}, "use_parallel_residual is 'yes'"),
        ({"hidden_act": "relu"}, "hidden_act is 'relu'"),
        ({"model_type": "llama"}, "model_type is 'llama'"),
        # GPT-NeoX configs TransformerLens cannot express.
        ({"attention_bias": False}, "attention_bias is False; TransformerLens can express only"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings is True; TransformerLens"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings is 'no'; TransformerLens"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling is {'type'"),
        (
            {"rope_parameters": {"rope_type": "dynamic", "partial_rotary_factor": 0.25}},
            "rope_parameters.rope_type is 'dynamic'",
        ),
        ({"hidden_act": "gelu_new"}, "hidden_act is 'gelu_new', expected 'gelu'"),
    ],
)
def test_an_absurd_config_is_refused_before_the_weights_are_read(
    changes: dict[str, object], fragment: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors", tmp_path / "src")
    config = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))
    # Unreadable weights: a refusal that names the config shows it was checked first.
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ConfigError, match=r"config\.json") as refused:
        open_checkpoint(folder)
    assert fragment in str(refused.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[1, 2]", "expected a JSON object"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        (b'{"hidden_size": 64' + b" " * (2 << 20) + b"}", "larger than"),
        (b"\xff\xfe{}", "not a readable JSON file"),
    ],
)
def test_a_malformed_config_file_is_one_clear_error(
    content: bytes, fragment: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors", tmp_path / "src")
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=r"config\.json") as refused:
        open_checkpoint(folder)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_config_that_is_not_a_regular_file_is_refused_without_reading_it(
    kind: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors", tmp_path / "src")
    config = folder / "config.json"
    config.unlink()
    if kind == "device":
        config.symlink_to("/dev/zero")  # would never end
    else:
        os.mkfifo(config)  # opening it for reading would wait for a writer forever
    with pytest.raises(ConfigError, match="not a regular file"):
        open_checkpoint(folder)


def test_an_absurd_config_is_one_line_from_the_cli(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = copy_of(tiny_checkpoints, "safetensors", tmp_path / "src")
    config = json.loads((folder / "config.json").read_text()) | {"num_attention_heads": 0}
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line(
        cli(["convert", str(folder), "-o", str(tmp_path / "o")]), "num_attention_heads is 0"
    )
