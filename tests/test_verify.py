"""``pythia-tl verify``: a sound file passes; a wrong bit, config or source fails it."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic import write_checkpoint
from tl_reference import tl_forward

from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.processing import NO_PROCESSING, Processing
from pythia_tl.source import resolve_source
from pythia_tl.verify import VerifyOptions, verify_file
from pythia_tl.verify.tl_forward import tl_logits


def converted(
    source: Path, out: Path, dtype: str = "auto", processing: Processing = NO_PROCESSING
) -> Path:
    convert(resolve_source(str(source)), out, ConvertOptions(dtype=dtype, processing=processing))
    return out


def flip_bit(path: Path, key: str, flat_index: int, bit: int) -> None:
    """Invert one bit of one element of ``key``, in place, leaving header and metadata as they
    were (as a disk or a bad copy would)."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + header_len])[key]
    itemsize = {"F16": 2, "BF16": 2, "F32": 4}[entry["dtype"]]
    start = 8 + header_len + entry["data_offsets"][0] + flat_index * itemsize
    raw[start + bit // 8] ^= 1 << (bit % 8)  # little-endian: bit 0 is the lowest mantissa bit
    path.write_bytes(bytes(raw))


def rewrite(path: Path, change: Callable[[dict[str, torch.Tensor], dict[str, str]], None]) -> None:
    """Rewrite ``path`` with its tensors and metadata passed through ``change``."""
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = dict(f.metadata())
    change(tensors, metadata)
    save_file(tensors, path, metadata=metadata)


def assert_fails(result: tuple[int, str, str], check: str, *fragments: str) -> None:
    status, stdout, stderr = result
    assert status == 1, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "verification failed" in lines[0], lines[0]
    assert f"verification failed: {check}:" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert any(line.startswith("failed") and check in line for line in stdout.splitlines()), stdout


# --- sound files pass ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "dtype"),
    [
        ("safetensors", "auto"),
        ("safetensors-sharded", "float32"),
        ("bin", "bfloat16"),
        ("bin-sharded", "auto"),
        ("v5-lm_head", "float16"),
    ],
)
def test_a_fresh_conversion_verifies(
    layout: str, dtype: str, cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints[layout], tmp_path / "out.safetensors", dtype)
    status, stdout, stderr = cli(["verify", str(out), "--json"])
    assert (status, stderr) == (0, ""), stderr
    report = json.loads(stdout)
    assert report["ok"] is True
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses == {"integrity": "ok", "metadata": "ok", "source": "ok", "logits": "skipped"}
    source = next(c for c in report["checks"] if c["name"] == "source")
    assert source["tensors"] == 16 * tiny_checkpoints.shape.n_layers + 5
    assert source["comparison"].startswith("bitwise")


def test_human_output_lists_every_check(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    status, stdout, stderr = cli(["verify", str(out)])
    assert (status, stderr) == (0, "")
    lines = stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [
        ["ok", "integrity"],
        ["ok", "metadata"],
        ["ok", "source"],
        ["skipped", "logits"],
    ]
    assert lines[-1] == f"verified {out}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_processed_file_verifies_within_the_stated_tolerance(
    dtype: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, hf_env: HfEnv
) -> None:
    out = converted(
        tiny_checkpoints["safetensors"], tmp_path / "p.safetensors", dtype, Processing.all()
    )
    report = verify_file(out)
    assert report.ok, report.failures
    source = next(c for c in report.checks if c.name == "source")
    assert "processed within eps(" in source.data["comparison"]


# --- one wrong bit fails ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "bit", "what"),
    [
        ("auto", 15, "the sign of a float16"),
        ("auto", 0, "the lowest mantissa bit of a float16"),
        ("float32", 0, "the lowest mantissa bit of a float32 cast up from float16"),
        ("bfloat16", 0, "the lowest mantissa bit of a bfloat16 rounded from float16"),
    ],
)
def test_one_flipped_bit_is_caught(
    dtype: str, bit: int, what: str, cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors", dtype)
    flip_bit(out, "blocks.1.attn.W_K", flat_index=77, bit=bit)
    result = cli(["verify", str(out)])
    d_model, d_head = tiny_checkpoints.shape.d_model, tiny_checkpoints.shape.d_head
    index = [77 // (d_model * d_head), 77 // d_head % d_model, 77 % d_head]  # of [head, m, d]
    assert_fails(result, "source", "blocks.1.attn.W_K: 1 of", f"first at {index}")


def test_one_flipped_sign_in_a_processed_tensor_is_caught(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, hf_env: HfEnv
) -> None:
    out = converted(
        tiny_checkpoints["safetensors"], tmp_path / "p.safetensors", "float16", Processing.all()
    )
    flip_bit(out, "blocks.0.mlp.W_in", flat_index=5, bit=15)
    report = verify_file(out)
    assert [c.name for c in report.failures] == ["source"]
    assert report.failures[0].detail.startswith("blocks.0.mlp.W_in: 1 of")


def test_every_differing_tensor_is_reported_in_json(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["bin"], tmp_path / "out.safetensors")
    flip_bit(out, "embed.W_E", flat_index=0, bit=3)
    flip_bit(out, "unembed.W_U", flat_index=10, bit=9)
    status, stdout, _ = cli(["verify", str(out), "--json"])
    assert status == 1
    report = json.loads(stdout)
    assert report["ok"] is False
    source = next(c for c in report["checks"] if c["name"] == "source")
    assert source["status"] == "failed"
    assert [m["tensor"] for m in source["mismatches"]] == ["embed.W_E", "unembed.W_U"]
    assert [m["values_differing"] for m in source["mismatches"]] == [1, 1]


# --- integrity ----------------------------------------------------------------------------


def test_a_non_finite_value_fails_integrity(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    rewrite(out, lambda t, m: t["ln_final.b"].__setitem__(3, float("nan")))
    assert_fails(cli(["verify", str(out)]), "integrity", "ln_final.b has 1 non-finite values")


def test_a_truncated_file_fails_integrity(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    out.write_bytes(out.read_bytes()[:-100])
    status, stdout, stderr = cli(["verify", str(out), "--json"])
    assert status == 1
    checks = {c["name"]: c["status"] for c in json.loads(stdout)["checks"]}
    assert checks == {
        "integrity": "failed",
        "metadata": "skipped",
        "source": "skipped",
        "logits": "skipped",
    }
    assert "not a valid safetensors file" in stderr


def test_a_missing_file_is_one_error(cli: Run, tmp_path: Path) -> None:
    status, stdout, stderr = cli(["verify", str(tmp_path / "nope.safetensors")])
    assert (status, stdout) == (1, "")
    assert stderr.strip() == f"error: {tmp_path / 'nope.safetensors'}: no such file"


# --- metadata -----------------------------------------------------------------------------


def _set_tl(key: str, value: object) -> Callable[[dict[str, torch.Tensor], dict[str, str]], None]:
    def change(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        cfg = json.loads(metadata["tl_config"])
        cfg[key] = value
        metadata["tl_config"] = json.dumps(cfg)

    return change


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (_set_tl("n_heads", 8), "tl_config d_head"),
        (_set_tl("d_mlp", 128), "tensor blocks.0.mlp.W_in has shape [64, 256]"),
        (_set_tl("n_layers", 3), "tensor blocks.2."),
        (_set_tl("n_layers", 10**9), "n_layers is 1000000000"),
        (_set_tl("rotary_dim", 7), "tl_config rotary_dim is 7"),
        (_set_tl("eps", float("nan")), "tl_config eps is nan"),
        (_set_tl("normalization_type", "LNPre"), "tl_config normalization_type"),
        (_set_tl("d_vocab", 0), "tl_config d_vocab is 0"),
        (_set_tl("rotary_adjacent_pairs", True), "tl_config rotary_adjacent_pairs"),
        (lambda t, m: m.pop("source_files"), "metadata lacks 'source_files'"),
        (lambda t, m: m.update(commit="abc"), "metadata commit is 'abc'"),
        (lambda t, m: m.update(dtype="float32"), "metadata dtype says F32"),
        (lambda t, m: m.update(processing='["fold_everything"]'), "metadata processing"),
        (lambda t, m: m.update(source_files='{"../x": "' + "0" * 64 + '"}'), "source_files"),
        (lambda t, m: t.pop("blocks.1.ln2.w"), "tensor blocks.1.ln2.w is missing"),
        (lambda t, m: t.update(extra=torch.zeros(2)), "tensor extra is not part"),
    ],
)
def test_inconsistent_metadata_fails(
    change: Callable[[dict[str, torch.Tensor], dict[str, str]], None],
    fragment: str,
    cli: Run,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    rewrite(out, change)
    assert_fails(cli(["verify", str(out)]), "metadata", fragment)


# --- the source ---------------------------------------------------------------------------


def test_a_source_folder_that_is_gone_fails_unless_given_or_skipped(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = tmp_path / "src"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    out = converted(folder, tmp_path / "out.safetensors")
    moved = folder.rename(tmp_path / "moved")
    assert_fails(cli(["verify", str(out)]), "source", "gone")
    status, stdout, stderr = cli(["verify", str(out), str(moved)])
    assert (status, stderr) == (0, ""), stderr
    status, stdout, stderr = cli(["verify", str(out), "--no-source"])
    assert (status, stderr) == (0, "")
    assert "skipped  source     not asked for (--no-source)" in stdout


def test_a_tl_config_that_disagrees_with_the_source_fails(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    rewrite(out, _set_tl("rotary_dim", 6))  # consistent in itself, not with config.json
    assert_fails(cli(["verify", str(out)]), "source", "config.json gives tl_config rotary_dim = 4")


def test_another_source_fails(cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    other = tmp_path / "other"
    write_checkpoint(other, tiny_checkpoints.shape, layout="safetensors", seed=1)
    assert_fails(cli(["verify", str(out), str(other)]), "source", "embed.W_E: ")


def test_same_tensors_from_other_files_fail_on_the_recorded_hashes(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoints["safetensors"], copy)
    with (copy / "model.safetensors").open("r+b") as f:
        # A metadata-only edit: the tensors stay, the file's bytes (and sha256) change.
        raw = f.read()
        f.seek(0)
        f.write(raw.replace(b'"format":"pt"', b'"format":"PT"'))
    assert_fails(cli(["verify", str(out), str(copy)]), "source", "sha256")


def test_a_hub_source_is_pinned_to_the_recorded_commit(
    cli: Run,
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    hf_env: HfEnv,
    tmp_path: Path,
) -> None:
    repo = "EleutherAI/pythia-70m"
    stand_in_hub.add_revision(repo, "main", tiny_checkpoints["safetensors-sharded"])
    out = tmp_path / "out.safetensors"
    assert cli(["convert", "pythia-70m", "-o", str(out), "-q", "--keep-downloads"])[0] == 0
    # main moves on to other weights: verification still uses the commit that was converted.
    other = tmp_path / "other"
    write_checkpoint(other, tiny_checkpoints.shape, layout="safetensors", seed=5)
    stand_in_hub.add_revision(repo, "main", other)
    status, stdout, stderr = cli(["verify", str(out), "--json"])
    assert (status, stderr) == (0, ""), stderr
    assert json.loads(stdout)["ok"] is True
    status, _, _ = cli(["verify", str(out), "pythia-70m"])
    assert status == 0
    assert_fails(cli(["verify", str(out), "pythia-70m", "--revision", "main"]), "source")
    # Offline, the recorded commit is served from the cache.
    hf_env.set_offline(True)
    stand_in_hub.clear_requests()
    assert cli(["verify", str(out)])[0] == 0
    assert stand_in_hub.requests == []


# --- logits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "processing"),
    [("auto", NO_PROCESSING), ("bfloat16", NO_PROCESSING), ("float16", Processing.all())],
)
def test_logits_agree_for_a_sound_file(
    dtype: str,
    processing: Processing,
    cli: Run,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
) -> None:
    out = converted(
        tiny_checkpoints["safetensors"], tmp_path / "out.safetensors", dtype, processing
    )
    status, stdout, stderr = cli(["verify", str(out), "--logits", "--json"])
    assert (status, stderr) == (0, ""), stderr
    logits = next(c for c in json.loads(stdout)["checks"] if c["name"] == "logits")
    assert logits["status"] == "ok"
    assert 0 <= logits["max_logprob_difference"] <= logits["tolerance"]


def test_logits_disagree_for_a_damaged_file(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    # Heads 0 and 1 of W_Q swapped: the shapes stay right, the model does not.
    rewrite(out, lambda t, m: t.update({"blocks.0.attn.W_Q": t["blocks.0.attn.W_Q"][[1, 0, 2, 3]]}))
    status, stdout, _ = cli(["verify", str(out), "--logits", "--json"])
    assert status == 1
    checks = {c["name"]: c for c in json.loads(stdout)["checks"]}
    assert checks["source"]["status"] == "failed"
    assert checks["logits"]["status"] == "failed"
    assert checks["logits"]["max_logprob_difference"] > checks["logits"]["tolerance"]


def test_logits_without_transformers_is_a_usage_error(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    status, stdout, stderr = cli(["verify", str(out), "--logits"])
    assert (status, stdout) == (2, "")
    assert stderr.strip() == "error: --logits needs transformers: pip install 'pythia-tl[verify]'"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--no-source", "--logits"], "--logits runs the source model"),
        (
            ["--revision", "main"],
            "--revision, --step and --checkpoint-index select a revision of SOURCE",
        ),
        (["somewhere", "--no-source"], "--no-source contradicts SOURCE"),
    ],
)
def test_contradictory_options_are_usage_errors(
    args: list[str], fragment: str, cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    status, stdout, stderr = cli(["verify", str(out), *args])
    assert (status, stdout) == (2, "")
    assert fragment in stderr and len(stderr.strip().splitlines()) == 1


# --- the package's TransformerLens forward pass -------------------------------------------


@pytest.mark.parametrize(
    ("normalization", "parallel"), [("LN", True), ("LN", False), ("LNPre", True)]
)
def test_tl_forward_matches_the_tests_oracle(
    normalization: str,
    parallel: bool,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    hf_env: HfEnv,
) -> None:
    out = converted(tiny_checkpoints["safetensors"], tmp_path / "out.safetensors", "float32")
    with safe_open(out, framework="pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        cfg = json.loads(f.metadata()["tl_config"])
    cfg |= {"normalization_type": normalization, "parallel_attn_mlp": parallel}
    tokens = torch.randint(0, cfg["d_vocab"], (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        tl_logits(weights, cfg, tokens), tl_forward(weights, cfg, tokens), atol=1e-5, rtol=0
    )


def test_verify_is_callable_as_a_library(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, hf_env: HfEnv
) -> None:
    out = converted(tiny_checkpoints["bin-sharded"], tmp_path / "out.safetensors")
    seen: list[int] = []
    report = verify_file(out, VerifyOptions(), on_bytes=lambda n, total: seen.append(n))
    assert report.ok
    assert sum(seen) == 2 * sum(
        t.numel() * t.element_size() for t in _tensors(out).values()
    )  # every tensor read twice: the integrity pass and the comparison


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
