"""``pythia-tl batch`` against the stand-in Hub: a suite of steps, reruns, duplicates, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from batch_suite import (
    DUPLICATE,
    N_TENSORS,
    STEPS_SPEC,
    Suite,
    file_sha256,
    metadata_of,
    output_path,
    publish_suite,
)
from conftest import CliResult, HfEnv
from hub_server import StandInHub
from safetensors.torch import load_file

from pythia_tl.cli import main
from pythia_tl.engine.convert import convert
from pythia_tl.source import resolve_source

MODELS = ["pythia-70m", "pythia-160m"]


@pytest.fixture
def suite(stand_in_hub: StandInHub, tmp_path: Path) -> Suite:
    return publish_suite(stand_in_hub, tmp_path / "hub-src")


def run_batch_cli(run_cli, out: Path, *extra: str, env: dict | None = None) -> CliResult:
    return run_cli(["batch", *MODELS, "--steps", STEPS_SPEC, "-o", str(out), *extra], env=env)


def summary_of(out: Path, name: str = "summary.json") -> dict:
    return json.loads((out / name).read_text())


def statuses(summary: dict) -> dict[tuple[str, int], str]:
    return {(e["model"], e["step"]): e["status"] for e in summary["revisions"]}


def weight_blobs(hf_env: HfEnv) -> list[Path]:
    """Blobs in the cache that are weights (the small JSON files are not LFS files)."""
    return [
        p for p in hf_env.cache.glob("models--*/blobs/*") if p.is_file() and p.stat().st_size > 4096
    ]


def test_a_batch_converts_every_step_and_links_the_duplicate(
    suite: Suite, hf_env: HfEnv, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    result = run_batch_cli(run_cli, out, "--json", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == summary_of(out)
    assert summary["complete"] is True
    assert summary["counts"] == {
        "converted": 9,
        "skipped": 0,
        "duplicate": 1,
        "failed": 0,
        "cancelled": 0,
    }
    entries = {(e["model"], e["step"]): e for e in summary["revisions"]}
    assert list(entries) == suite.items()
    for (repo_id, step), entry in entries.items():
        assert entry["commit"] == suite.commit(repo_id, step)
        if (repo_id, step) == DUPLICATE[:2]:
            continue
        path = output_path(out, repo_id, step)
        assert entry["output"] == path.relative_to(out).as_posix()
        assert entry["output_sha256"] == file_sha256(path)
        assert entry["bytes"] == path.stat().st_size
        assert entry["source_sha256"] == suite.weight_sha256(repo_id, step)
        assert len(load_file(path)) == N_TENSORS

    # The duplicate (step2 has step143000's weights) gets no file: a file under its name would
    # claim step143000's revision. The latest step converts; none of step2's files is read.
    duplicate = entries[("EleutherAI/pythia-70m", 2)]
    assert duplicate["status"] == "duplicate" and duplicate["output"] is None
    assert duplicate["duplicate_of"] == "step143000"
    assert duplicate["weights_in"] == "pythia-70m/step143000.safetensors"
    assert duplicate["anomaly"] == "step2 holds the same weight files as a later step, step143000"
    assert not output_path(out, "EleutherAI/pythia-70m", 2).exists()
    # load(), inspect and verify read the file by that name: they say why there is none.
    inspected = run_cli(["inspect", str(output_path(out, "EleutherAI/pythia-70m", 2))])
    assert inspected.returncode == 1 and inspected.stderr.count("\n") == 1
    assert (
        "no such file: not written by the batch, because step2 holds the same weight files "
        "as a later step, step143000 (see summary.json); its weights are in " in inspected.stderr
    )
    final = output_path(out, "EleutherAI/pythia-70m", 143000)
    assert metadata_of(final)["revision"] == "step143000"
    duplicate_commit = suite.commit("EleutherAI/pythia-70m", 2)
    assert not [d for d in suite.hub.downloads if d[1] == duplicate_commit]

    # Downloaded weights are gone from the cache; the small files that record commits stay.
    assert weight_blobs(hf_env) == []
    assert list(hf_env.cache.glob("models--*/snapshots/*/config.json"))

    # Each output holds what `convert` makes of the same checkpoint folder.
    folder = suite.folders[("EleutherAI/pythia-160m", 1000)]
    direct = tmp_path / "direct.safetensors"
    convert(resolve_source(str(folder)), direct)
    batched = load_file(output_path(out, "EleutherAI/pythia-160m", 1000))
    expected = load_file(direct)
    assert batched.keys() == expected.keys()
    assert all(torch.equal(batched[k], expected[k]) for k in expected)

    lines = result.stderr.strip().splitlines()
    assert lines == [], lines  # --json: nothing but the JSON object


def test_rerunning_a_finished_batch_converts_and_downloads_nothing(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    assert run_batch_cli(run_cli, out).returncode == 0
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    first = summary_of(out)
    suite.hub.clear_requests()

    again = run_batch_cli(run_cli, out)
    assert again.returncode == 0, again.stderr
    summary = summary_of(out)
    assert set(statuses(summary).values()) == {"skipped", "duplicate"}
    assert suite.hub.downloads == []
    assert not [path for _, path in suite.hub.requests if "/resolve/" in path]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == mtimes
    # What the first run recorded of each output is carried over, not recomputed.
    for before, after in zip(first["revisions"], summary["revisions"], strict=True):
        assert (after["commit"], after["output_sha256"], after["bytes"]) == (
            before["commit"],
            before["output_sha256"],
            before["bytes"],
        )
    lines = again.stderr.strip().splitlines()
    assert sum(line.startswith("skipped ") for line in lines) == 9
    # One line per group of duplicates, every run: a file under step2's name would mislabel it.
    assert lines[-2] == (
        "warning: pythia-70m step2 holds the same weight files as step143000 (sha256): no file "
        "written for it; pythia-70m/step143000.safetensors holds the weights (see summary.json)"
    )
    assert lines[-1].startswith("batch: 10 revisions: 9 skipped, 1 duplicate; summary in ")


def test_an_offline_rerun_checks_commits_against_the_cache(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    assert run_batch_cli(run_cli, out).returncode == 0
    suite.hub.clear_requests()
    offline = run_batch_cli(run_cli, out, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert suite.hub.requests == []
    entries = summary_of(out)["revisions"]
    assert {e["status"] for e in entries} == {"skipped", "duplicate"}
    # The commits come from the cache's refs, which cleaning the downloads kept. The duplicate
    # was never downloaded: it is settled from the summary's record of it, with no network.
    assert {(e["model"], e["step"]): e["commit"] for e in entries} == {
        item: suite.commit(*item) for item in suite.items()
    }


def test_other_options_replace_the_outputs_and_keep_downloads_keeps_them(
    suite: Suite, hf_env: HfEnv, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    assert run_batch_cli(run_cli, out).returncode == 0
    wider = run_batch_cli(run_cli, out, "--dtype", "float32", "--keep-downloads", "--json")
    assert wider.returncode == 0, wider.stderr
    summary = json.loads(wider.stdout)
    assert summary["counts"]["converted"] == 9 and summary["counts"]["duplicate"] == 1
    replaced = [e["reason"] for e in summary["revisions"] if e["status"] == "converted"]
    assert replaced == ["replaced the output (dtype float16, asked for float32)"] * 9
    assert {metadata_of(p)["dtype"] for p in out.rglob("*.safetensors")} == {"float32"}
    assert weight_blobs(hf_env)

    same = run_batch_cli(run_cli, out, "--dtype", "float32")
    assert same.returncode == 0, same.stderr
    assert set(statuses(summary_of(out)).values()) == {"skipped", "duplicate"}


def test_processing_options_are_applied_and_checked_on_resume(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    first = run_batch_cli(run_cli, out, "--process")
    assert first.returncode == 0, first.stderr
    steps = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]
    outputs = list(out.rglob("*.safetensors"))
    assert outputs
    for path in outputs:
        metadata = metadata_of(path)
        assert json.loads(metadata["processing"]) == steps
        assert json.loads(metadata["tl_config"])["normalization_type"] == "LNPre"
    again = run_batch_cli(run_cli, out, "--process")
    assert again.returncode == 0, again.stderr
    assert set(statuses(summary_of(out)).values()) == {"skipped", "duplicate"}
    raw = run_batch_cli(run_cli, out, "--json")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["counts"]["converted"] == 9
    assert {metadata_of(p)["processing"] for p in outputs} == {"[]"}


def test_a_branch_with_a_missing_shard_fails_and_the_others_land(
    stand_in_hub: StandInHub, tmp_path: Path, run_cli
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    broken = tmp_path / "broken"
    shutil.copytree(suite.folders[("EleutherAI/pythia-160m", 2)], broken)
    lost = sorted(broken.glob("model-*.safetensors"))[-1]
    lost.unlink()
    stand_in_hub.add_revision("EleutherAI/pythia-160m", "step2", broken)
    out = tmp_path / "out"

    result = run_batch_cli(run_cli, out)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 10 revisions failed, first pythia-160m step2: "), last
    assert f"names shard '{lost.name}'" in last
    summary = summary_of(out)
    failed = [e for e in summary["revisions"] if e["status"] == "failed"]
    assert [(e["model_name"], e["step"]) for e in failed] == [("pythia-160m", 2)]
    assert f"names shard '{lost.name}'" in failed[0]["reason"]
    assert summary["counts"]["converted"] == 8
    assert not output_path(out, "EleutherAI/pythia-160m", 2).exists()
    assert sorted(p.name for p in (out / "pythia-160m").iterdir()) == [
        "step0.safetensors",
        "step1.safetensors",
        "step1000.safetensors",
        "step143000.safetensors",
    ]


def test_when_the_first_of_two_duplicates_fails_the_second_is_converted(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    repo_id, step, original = DUPLICATE
    shard = sorted(suite.folders[(repo_id, step)].glob("model-*.safetensors"))[0].name
    # The latest step converts first; when it fails, the earlier one converts on its own.
    suite.hub.break_file(repo_id, shard, revision=f"step{original}", kind="status", status=404)
    out = tmp_path / "out"
    assert run_batch_cli(run_cli, out).returncode == 1
    by_item = statuses(summary_of(out))
    assert (by_item[(repo_id, original)], by_item[(repo_id, step)]) == ("failed", "converted")
    assert metadata_of(output_path(out, repo_id, step))["revision"] == f"step{step}"


def test_fail_fast_cancels_what_has_not_started(
    stand_in_hub: StandInHub, tmp_path: Path, run_cli
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    # The first item of the work list (pythia-160m step0, a .bin) cannot be downloaded.
    stand_in_hub.break_file(
        "EleutherAI/pythia-160m", "pytorch_model.bin", kind="status", status=404
    )
    out = tmp_path / "out"
    result = run_batch_cli(run_cli, out, "--fail-fast")
    assert result.returncode == 1
    summary = summary_of(out)
    by_status = statuses(summary)
    assert by_status[suite.items()[0]] == "failed"
    assert {by_status[item] for item in suite.items()[1:]} == {"cancelled"}
    assert set(list(by_status.values())[1:]) == {"cancelled"}
    assert len(summary["revisions"]) == len(suite.items())
    assert summary["complete"] is False
    assert not list(out.rglob("*.safetensors"))


def test_a_file_that_is_not_a_pythia_tl_output_is_left_alone(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    stranger = output_path(out, "EleutherAI/pythia-70m", 1)
    stranger.parent.mkdir(parents=True)
    stranger.write_bytes(b"not a safetensors file")
    result = run_batch_cli(run_cli, out)
    assert result.returncode == 1
    assert stranger.read_bytes() == b"not a safetensors file"
    entry = next(
        e for e in summary_of(out)["revisions"] if e["output"] == "pythia-70m/step1.safetensors"
    )
    assert entry["status"] == "failed" and "move it away" in entry["reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0,3"], "--steps: pythia-70m has no checkpoint at step 3"),
        (["--steps", "600:900"], "--steps: range 600-900 covers no checkpoint of pythia-70m"),
        (["--steps", "600-900"], "--steps: range 600-900 covers no checkpoint of pythia-70m"),
        (["--steps", "1500"], "pythia-70m has no checkpoint at step 1500 (nearest: 1000 and 2000"),
        (["--steps", "1,x"], "--steps '1,x': 'x' is not a step number"),
        (["--steps", "0", "--shard", "3/2"], "--shard '3/2': K must be between 1 and N"),
        (["--steps", "0", "--dtype", "float8"], "--dtype 'float8'"),
    ],
)
def test_usage_errors_are_named_before_any_work(
    args: list[str], message: str, hf_env: HfEnv, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["batch", "pythia-70m", "-o", str(out), *args])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_a_run_reports_its_own_counts_and_the_folder_keeps_every_record(
    stand_in_hub: StandInHub, tmp_path: Path, run_cli
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    broken = tmp_path / "broken"
    shutil.copytree(suite.folders[("EleutherAI/pythia-160m", 2)], broken)
    sorted(broken.glob("model-*.safetensors"))[-1].unlink()
    stand_in_hub.add_revision("EleutherAI/pythia-160m", "step2", broken)
    out = tmp_path / "out"
    earlier = run_cli(["batch", "pythia-160m", "--steps", "1,2", "-o", str(out), "--json"])
    assert earlier.returncode == 1
    assert json.loads(earlier.stdout)["counts"]["failed"] == 1

    # Another model into the same folder: this run has no failure, whatever the folder holds.
    result = run_cli(["batch", "pythia-70m", "--steps", "0,1", "-o", str(out), "--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == summary_of(out)
    assert report["counts"] == {
        "converted": 2, "skipped": 0, "duplicate": 0, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert report["complete"] is True
    assert report["folder"] == {
        "revisions": 4,
        "complete": True,
        "counts": {"converted": 3, "skipped": 0, "duplicate": 0, "failed": 1, "cancelled": 0},
    }
    assert len(report["revisions"]) == 4
    printed = run_cli(["batch", "pythia-70m", "--steps", "0,1", "-o", str(out)])
    assert printed.returncode == 0, printed.stderr
    assert printed.stderr.strip().splitlines()[-1].startswith("batch: 2 revisions: 2 skipped;")
