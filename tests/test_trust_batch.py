"""Batch trusts nothing it did not check: changed outputs, ``--recheck``, two runs sharing one
folder, records of other models, and stale temporaries everywhere it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from batch_suite import Suite, file_sha256, output_path, publish_suite
from conftest import REPO_ROOT, Run
from hub_server import StandInHub

from pythia_tl.output import atomic
from pythia_tl.output.atomic import temp_path_for

MODEL = "pythia-70m"
REPO = "EleutherAI/pythia-70m"


@pytest.fixture
def suite(stand_in_hub: StandInHub, tmp_path: Path) -> Suite:
    return publish_suite(stand_in_hub, tmp_path / "hub-src")


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def entries(out: Path) -> dict[tuple[str, int], dict]:
    return {(e["model"], e["step"]): e for e in summary_of(out)["revisions"]}


def assert_recorded_sha256_are_the_files(out: Path) -> None:
    for entry in summary_of(out)["revisions"]:
        if entry["output_sha256"] is not None:
            assert entry["output_sha256"] == file_sha256(out / entry["output"]), entry


def flip_last_byte(path: Path, keep_mtime: bool = False) -> None:
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def batch(cli: Run, out: Path, steps: str = "0,1", *extra: str, model: str = MODEL) -> None:
    status, _, stderr = cli(["batch", model, "--steps", steps, "-o", str(out), *extra])
    assert status == 0, stderr


def test_an_output_changed_since_it_was_written_is_converted_again(
    suite: Suite, cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch(cli, out)
    flip_last_byte(output_path(out, REPO, 1))
    batch(cli, out)
    found = entries(out)
    assert found[(REPO, 0)]["status"] == "skipped"
    assert found[(REPO, 1)]["status"] == "converted"
    assert "changed since it was written" in found[(REPO, 1)]["reason"]
    assert_recorded_sha256_are_the_files(out)


def test_recheck_hashes_every_output_again(suite: Suite, cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch(cli, out)
    flip_last_byte(output_path(out, REPO, 1), keep_mtime=True)  # looks untouched
    batch(cli, out, "0,1", "--recheck")
    found = entries(out)
    assert found[(REPO, 0)]["status"] == "skipped"
    assert found[(REPO, 1)]["status"] == "converted"
    assert_recorded_sha256_are_the_files(out)


def test_a_rerun_keeps_the_records_of_models_it_was_not_asked_about(
    suite: Suite, cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch(cli, out, "0")
    batch(cli, out, "0", model="pythia-160m")
    found = entries(out)
    assert found[(REPO, 0)]["status"] == "converted"
    assert found[("EleutherAI/pythia-160m", 0)]["status"] == "converted"
    assert summary_of(out)["complete"] is True
    assert_recorded_sha256_are_the_files(out)


def test_a_rerun_removes_stale_temporaries_everywhere_it_writes(
    suite: Suite, cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch(cli, out, "0")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a process that is gone: the files named after it are stale
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atomic.os, "getpid", lambda: dead.pid)
        stale = [
            temp_path_for(out / "summary.json"),
            temp_path_for(output_path(out, REPO, 0)),
        ]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    batch(cli, out, "0")  # nothing to convert: everything is skipped
    assert entries(out)[(REPO, 0)]["status"] == "skipped"
    assert [path for path in stale if path.exists()] == []


def test_two_runs_into_one_folder_at_once_share_the_work(suite: Suite, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pythia_tl", "batch", MODEL, "pythia-160m"]
    command += ["--steps", "0,1,2,1000", "-o", str(out)]
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
    summary = summary_of(out)
    assert summary["complete"] is True
    assert summary["counts"]["failed"] == 0
    assert len(summary["revisions"]) == 8
    assert_recorded_sha256_are_the_files(out)
