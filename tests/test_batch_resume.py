"""A batch stopped mid-way (SIGKILL, SIGTERM) leaves only complete outputs and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_suite import DUPLICATE, N_TENSORS, STEPS_SPEC, Suite, publish_suite
from conftest import REPO_ROOT
from hub_server import StandInHub

from pythia_tl.output.metadata import read_output

BROKEN = ("EleutherAI/pythia-70m", 1000)


@pytest.fixture
def suite(stand_in_hub: StandInHub, tmp_path: Path) -> Suite:
    """The suite, with pythia-70m step1000's first shard unobtainable: a run cannot finish
    before it is stopped, whatever the machine's speed."""
    suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    repo_id, step = BROKEN
    first_shard = sorted(suite.folders[BROKEN].glob("pytorch_model-*.bin"))[0].name
    stand_in_hub.break_file(repo_id, first_shard, revision=f"step{step}", kind="truncate")
    return suite


def start_batch(out: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pythia_tl", "batch", "pythia-70m", "pythia-160m"]
    command += ["--steps", STEPS_SPEC, "-o", str(out), "--jobs", "1"]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished_outputs(out: Path) -> set[tuple[str, int]]:
    return {
        (f"EleutherAI/{path.parent.name}", int(path.stem.removeprefix("step")))
        for path in out.glob("*/step*.safetensors")
    }


def wait_for_a_first_output(process: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 120
    while not finished_outputs(out):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.01)


def assert_only_complete_outputs(out: Path) -> None:
    for path in out.glob("*/step*.safetensors"):
        assert len(read_output(path).tensors) == N_TENSORS


def test_a_killed_batch_leaves_complete_outputs_and_the_rerun_does_only_the_rest(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    process = start_batch(out)
    wait_for_a_first_output(process, out)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    assert_only_complete_outputs(out)
    done = finished_outputs(out)
    assert done and BROKEN not in done
    interrupted = json.loads((out / "summary.json").read_text())
    assert interrupted["complete"] is False
    # What a writer killed mid-file leaves beside its target; the rerun must not mind it.
    (out / "pythia-70m").mkdir(exist_ok=True)
    stale = out / "pythia-70m" / ".step1.safetensors.pythia-tl-elsewhere-99999-0123abcd.tmp"
    stale.write_bytes(b"half a file")

    suite.hub.clear_faults()
    suite.hub.clear_requests()
    rerun = run_cli(["batch", "pythia-70m", "pythia-160m", "--steps", STEPS_SPEC, "-o", out])
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    by_item = {(e["model"], e["step"]): e["status"] for e in summary["revisions"]}
    assert {item for item, status in by_item.items() if status == "skipped"} == done
    assert all(
        status in ("converted", "duplicate") for item, status in by_item.items() if item not in done
    )
    done_commits = {suite.commit(*item) for item in done}
    assert not [d for d in suite.hub.downloads if d[1] in done_commits]
    # Every revision has its file but the duplicate, which gets none (batch.dedupe).
    assert finished_outputs(out) == set(suite.items()) - {DUPLICATE[:2]}
    assert_only_complete_outputs(out)


def test_sigterm_stops_at_once_and_leaves_no_temporary_file(
    suite: Suite, tmp_path: Path, run_cli
) -> None:
    out = tmp_path / "out"
    process = start_batch(out)
    wait_for_a_first_output(process, out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "error: terminated"

    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert_only_complete_outputs(out)
    summary = json.loads((out / "summary.json").read_text())
    statuses = {(e["model"], e["step"]): e["status"] for e in summary["revisions"]}
    done = finished_outputs(out)
    assert {
        item for item, status in statuses.items() if status in ("converted", "duplicate")
    } == done
    assert {statuses[item] for item in suite.items() if item not in done} == {"cancelled"}

    suite.hub.clear_faults()
    rerun = run_cli(["batch", "pythia-70m", "pythia-160m", "--steps", STEPS_SPEC, "-o", out])
    assert rerun.returncode == 0, rerun.stderr
    # Every revision has its file but the duplicate, which gets none (batch.dedupe).
    assert finished_outputs(out) == set(suite.items()) - {DUPLICATE[:2]}
