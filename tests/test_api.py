"""The Python API: convert as the CLI does, checkpoints, tensors across steps (in memory, only
the bytes needed), trace (one stacked file, resumable after kill -9), export's provenance and
load's refusals of what is not a pythia-tl file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from batch_suite import STEPS_SPEC, publish_suite
from conftest import REPO_ROOT, Run, TinyCheckpoints
from hub_server import StandInHub
from safetensors import safe_open
from safetensors.torch import load_file
from synthetic import PythiaShape, write_checkpoint
from test_load import source_with_tokenizer
from test_remote import header_bytes

import pythia_tl
from pythia_tl.errors import OutputError, OutputFileError, UsageError
from pythia_tl.output.metadata import PROVENANCE_KEY, read_output, read_trace

REPO = "EleutherAI/pythia-70m"
STEP1000_INDEX = 11
KEYS = "embed.W_E,blocks.0.attn.W_Q,blocks.0.attn.b_K"


def cli_convert(cli: Run, *args: str) -> None:
    status, _, err = cli(["convert", *args, "--quiet"])
    assert status == 0, err


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
def test_convert_writes_the_file_the_cli_writes_from_a_folder_and_from_the_hub(
    layout: str,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    tmp_path: Path,
    cli: Run,
) -> None:
    source = tiny_checkpoints[layout]
    by_cli, by_api = tmp_path / "cli.safetensors", tmp_path / "api.safetensors"
    cli_convert(cli, str(source), "-o", str(by_cli), "--tensors", "blocks.*", "--process")
    result = pythia_tl.convert(source, by_api, tensors="blocks.*", process=True, hash_output=True)
    assert by_api.read_bytes() == by_cli.read_bytes()
    assert result.output == by_api and result.tensors == len(read_output(by_api).tensors)
    assert result.processing == (
        "fold_ln",
        "center_writing_weights",
        "center_unembed",
        "fold_value_biases",
    )
    assert result.sha256 is not None and result.revision is None

    commit = stand_in_hub.add_revision(REPO, "step1000", source)
    hub_cli, hub_api = tmp_path / "hub-cli.safetensors", tmp_path / "hub-api.safetensors"
    cli_convert(cli, REPO, "--step", "1000", "-o", str(hub_cli))
    result = pythia_tl.convert("pythia-70m", hub_api, step=1000)
    assert hub_api.read_bytes() == hub_cli.read_bytes()
    assert (result.revision, result.commit, result.source) == ("step1000", commit, REPO)


def test_convert_names_its_parameters_in_errors(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    pythia_tl.convert(tiny_checkpoints["safetensors"], out)
    with pytest.raises(OutputError, match=r"overwrite=True"):
        pythia_tl.convert(tiny_checkpoints["safetensors"], out)
    with pytest.raises(UsageError, match=r"^dtype 'int8'"):
        pythia_tl.convert(tiny_checkpoints["safetensors"], out, dtype="int8", overwrite=True)
    with pytest.raises(UsageError, match=r"^tensors: 'nope\.\*' matches no tensor"):
        pythia_tl.convert(tiny_checkpoints["safetensors"], out, tensors="nope.*", overwrite=True)
    status, _, err = cli(["convert", str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    assert status == 1 and "--force" in err  # the CLI spells the same error as a flag
    into = tmp_path / "folder" / ""
    made = pythia_tl.convert(tiny_checkpoints["safetensors"], f"{into}{os.sep}")
    assert made.output == tmp_path / "folder" / "safetensors.safetensors"


def test_checkpoints_lists_the_hubs_step_branches(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    commits = {
        step: stand_in_hub.add_revision(
            REPO, f"step{step}", tiny_checkpoints["safetensors"], commit=f"{step:040x}"
        )
        for step in (0, 1000, 2000)
    }
    listing = pythia_tl.checkpoints("pythia-70m")
    assert "hub" in listing.origin
    assert {c.step: c.commit for c in listing.checkpoints if c.commit} == commits
    assert [c.step for c in listing.checkpoints if c.index == STEP1000_INDEX] == [1000]
    with pytest.raises(UsageError, match=r"^model .* is a local folder"):
        pythia_tl.checkpoints(str(tiny_checkpoints["safetensors"]))


# --- tensors across steps -------------------------------------------------------------------

BIG = PythiaShape(n_layers=3, d_model=256, n_heads=4, d_vocab=4096)
BIG_STEPS = {0: "safetensors-sharded", 1000: "bin", 2000: "safetensors"}


def publish_big(hub: StandInHub, root: Path) -> dict[int, Path]:
    folders = {}
    for step, layout in BIG_STEPS.items():
        folders[step] = root / f"step{step}"
        write_checkpoint(folders[step], BIG, layout=layout, seed=step, shard_bytes=2 << 20)
        hub.add_revision(REPO, f"step{step}", folders[step])
    return folders


def test_tensors_across_steps_equal_full_conversions_and_fetch_only_their_bytes(
    stand_in_hub: StandInHub, tmp_path: Path, cli: Run
) -> None:
    folders = publish_big(stand_in_hub, tmp_path / "hub")
    stand_in_hub.clear_requests()
    seen = []
    for step, tensors in pythia_tl.tensors("pythia-70m", ["embed.W_E"], "0,1000:2000"):
        seen.append(step)
        full = tmp_path / f"full-{step}.safetensors"
        cli_convert(cli, str(folders[step]), "-o", str(full))  # the folder: no Hub bytes
        expected = load_file(full)
        assert list(tensors) == ["embed.W_E"]
        assert tensors["embed.W_E"].dtype == torch.float16
        assert torch.equal(tensors["embed.W_E"], expected["embed.W_E"])
    assert seen == [0, 1000, 2000]
    selected = len(BIG_STEPS) * BIG.d_vocab * BIG.d_model * 2
    names = {p.name for folder in folders.values() for p in folder.iterdir()}
    fetched = sum(
        stand_in_hub.served_bytes(name) for name in names if name.endswith((".bin", ".safetensors"))
    )
    headers = sum(header_bytes(folder) for folder in folders.values())
    assert selected <= fetched <= 1.05 * selected + headers + len(BIG_STEPS) * (1 << 20)


def test_stacked_tensors_stack_each_key_over_the_steps_per_head(
    stand_in_hub: StandInHub, tmp_path: Path, cli: Run
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub")
    stacked = pythia_tl.stacked_tensors("pythia-160m", KEYS, [1000, 0, 1])
    assert stacked.steps == (0, 1, 1000)
    assert stacked.commits == tuple(suite.commit("EleutherAI/pythia-160m", s) for s in (0, 1, 1000))
    shape = stacked.tensors["blocks.0.attn.W_Q"].shape
    assert shape == (3, 2, 32, 16)  # steps, heads, d_model, d_head
    for i, step in enumerate(stacked.steps):
        full = tmp_path / f"full-{step}.safetensors"
        cli_convert(cli, str(suite.folders[("EleutherAI/pythia-160m", step)]), "-o", str(full))
        expected = load_file(full)
        for key in KEYS.split(","):
            assert torch.equal(stacked.tensors[key][i], expected[key]), (step, key)
    with pytest.raises(UsageError, match=r"^steps: pythia-160m has no checkpoint at step 3"):
        pythia_tl.stacked_tensors("pythia-160m", KEYS, [3])


# --- trace ------------------------------------------------------------------------------------

BROKEN_STEP = 1000


def start_trace(out: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pythia_tl", "trace", "pythia-70m", "--tensors", KEYS]
    command += ["--steps", STEPS_SPEC, "-o", str(out), *extra]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_trace_stacks_the_steps_into_one_file_and_resumes_after_kill_9(
    stand_in_hub: StandInHub, tmp_path: Path, cli: Run
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub")
    broken = suite.folders[(REPO, BROKEN_STEP)]
    first_shard = sorted(broken.glob("pytorch_model-*.bin"))[0].name
    # The trace cannot finish while this step cannot be read: it is killed before it ends.
    stand_in_hub.break_file(REPO, first_shard, revision=f"step{BROKEN_STEP}", kind="truncate")
    out = tmp_path / "trace.safetensors"
    parts = tmp_path / "trace.safetensors.parts" / "pythia-70m"
    process = start_trace(out)
    deadline = time.monotonic() + 120
    while not list(parts.glob("step*.safetensors")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no step was converted"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    done = {p.name for p in parts.glob("step*.safetensors")}

    stand_in_hub.clear_faults()
    status, stdout, err = cli(
        ["trace", "pythia-70m", "--tensors", KEYS, "--steps", STEPS_SPEC, "-o", str(out), "--json"]
    )
    assert status == 0, err
    report = json.loads(stdout)
    steps = [int(s) for s in STEPS_SPEC.split(",")]
    assert report["steps"] == steps
    assert report["parts"]["skipped"] >= len(done) >= 1  # not converted again
    assert not parts.parent.exists()

    record = read_trace(out)
    assert record.steps == tuple(steps)
    assert record.commits == tuple(suite.commit(REPO, step) for step in steps)
    assert record.revisions == tuple(f"step{step}" for step in steps)
    with safe_open(out, "pt") as handle:
        assert sorted(handle.keys()) == sorted(KEYS.split(","))
        for i, step in enumerate(steps):
            full = tmp_path / f"full-{step}.safetensors"
            cli_convert(cli, str(suite.folders[(REPO, step)]), "-o", str(full))
            expected = load_file(full)
            for key in KEYS.split(","):
                assert torch.equal(handle.get_slice(key)[i], expected[key]), (step, key)
    with pytest.raises(OutputFileError, match=r"a trace file .* not a model"):
        pythia_tl.load(out)


def test_trace_requires_tensors(cli: Run, tmp_path: Path) -> None:
    status, _, err = cli(["trace", "pythia-70m", "--steps", "0", "-o", str(tmp_path / "t")])
    assert status == 2 and "--tensors is required" in err


# --- export's provenance, and what load refuses -------------------------------------------------


def test_export_records_its_provenance_and_load_restores_the_checkpoint_fields(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = source_with_tokenizer(tiny_checkpoints, tmp_path / "src")
    commit = stand_in_hub.add_revision(REPO, "step1000", source)
    out = tmp_path / "out.safetensors"
    cli_convert(cli, REPO, "--step", "1000", "--dtype", "float32", "-o", str(out))
    folder = tmp_path / "hf"
    pythia_tl.export_hf_folder(out, folder)
    recorded = json.loads((folder / "config.json").read_text())[PROVENANCE_KEY]
    assert {k: recorded[k] for k in ("source", "revision", "commit", "step")} == {
        "source": REPO,
        "revision": "step1000",
        "commit": commit,
        "step": 1000,
    }
    assert recorded["converter_version"] == pythia_tl.__version__
    with safe_open(folder / "model.safetensors", "pt") as handle:
        assert json.loads(handle.metadata()[PROVENANCE_KEY]) == recorded
    bridge = pythia_tl.load(folder, backend="bridge")
    assert (bridge.cfg.checkpoint_index, bridge.cfg.checkpoint_value) == (STEP1000_INDEX, 1000)
    with pytest.raises(OutputFileError, match=r"backend='bridge'"):
        pythia_tl.load(folder, backend="hooked")


def test_load_says_what_is_not_a_pythia_tl_file_and_names_the_command(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputFileError, match=r"no such file; .*'pythia-tl convert pythia-14m"):
        pythia_tl.load("pythia-14m")
    raw = tiny_checkpoints["safetensors"] / "model.safetensors"
    with pytest.raises(
        OutputFileError, match=r"Hugging Face checkpoint's weights, not a pythia-tl file.*convert"
    ):
        pythia_tl.load(raw)
    with pytest.raises(OutputFileError, match=r"not one pythia-tl exported.*pythia-tl convert"):
        pythia_tl.load(tiny_checkpoints["safetensors"])
    with pytest.raises(UsageError, match=r"^backend 'tl5'"):
        pythia_tl.load(raw, backend="tl5")  # type: ignore[arg-type]


def test_importing_the_api_imports_no_torch() -> None:
    code = (
        "import sys, pythia_tl\n"
        "names = [pythia_tl.convert, pythia_tl.tensors, pythia_tl.trace, pythia_tl.checkpoints]\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_docs_tensors_research_loop_runs_against_the_stand_in_hub(
    stand_in_hub: StandInHub, tmp_path: Path
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub")
    readme = (REPO_ROOT / "docs" / "python-api.md").read_text()
    block = readme.split("<!-- research-loop -->\n```python\n", 1)[1].split("```", 1)[0]
    env = dict(os.environ)  # the stand-in Hub's endpoint and a private cache (hf_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:3]] == ["0", "1000", "143000"]
    assert all(len(json.loads(line.split(" ", 1)[1])) == 2 for line in lines[:3])  # 2 heads
    last_commit = suite.commit(REPO, 143000)[:7]
    assert lines[3].startswith(f"(0, 143000) {last_commit} embedding drift ")
