"""Signals never lost (issue 18, item 5): a stop asked for at any moment ends the command with
130/143 and one line - during start-up, when library code swallows it or turns it into another
exception, and in a batch whose workers sleep in a rate-limit wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_suite import REPOS, publish_suite
from conftest import REPO_ROOT, HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub

from pythia_tl.cli.signals import Interrupted, Terminated, stop_signals_raise


def test_a_swallowed_stop_still_ends_the_block() -> None:
    with pytest.raises(Interrupted), stop_signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except BaseException:
            pass
        finished = True
    assert finished


def test_a_stop_turned_into_another_exception_is_still_the_stop() -> None:
    with pytest.raises(Terminated), stop_signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException as exc:
            # As a C extension's import does: "cannot load module more than once per process".
            raise ImportError("cannot load module more than once per process") from exc


def test_no_stop_no_change() -> None:
    with pytest.raises(ValueError, match="plain"), stop_signals_raise():
        raise ValueError("plain")
    with stop_signals_raise():
        pass


_START_UP_HOOK = """
import os, pathlib, sys, time

class SlowCommandLine:
    def find_spec(self, name, path=None, target=None):
        if name == "pythia_tl.cli":
            pathlib.Path(os.environ["PYTHIA_TL_TEST_READY"]).touch()
            try:
                time.sleep(120)
            except BaseException:
                if os.environ.get("PYTHIA_TL_TEST_SWALLOW"):
                    return None  # swallowed: the import goes on
                raise
        return None

sys.meta_path.insert(0, SlowCommandLine())
"""


def _child_env(hook: Path, ready: Path, swallow: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(hook), str(REPO_ROOT), env.get("PYTHONPATH")) if p
    )
    env["PYTHIA_TL_TEST_READY"] = str(ready)
    if swallow:
        env["PYTHIA_TL_TEST_SWALLOW"] = "1"
    return env


@pytest.mark.parametrize("swallow", [False, True])
@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated")],
)
def test_a_stop_during_start_up_is_one_line_and_its_exit_status(
    signum: int,
    code: int,
    line: str,
    swallow: bool,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    hf_env: HfEnv,
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_START_UP_HOOK)
    ready = tmp_path / "ready"
    out = tmp_path / "o.safetensors"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pythia_tl",
            "convert",
            str(tiny_checkpoints["safetensors"]),
            "-o",
            str(out),
        ],
        env=_child_env(hook, ready, swallow),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
    while not ready.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the child never started importing the CLI"
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr.strip()) == (code, line)
    assert not out.exists()


_STOP_IN_THE_GAP = """
import os, signal, sys
import pythia_tl.cli as cli

real_main = cli.main
signum = int(sys.argv[1])

def main(argv=None, stops=None):
    # After the launcher's import, before the CLI has set its own handlers.
    os.kill(os.getpid(), signum)
    real_main(argv, stops)

cli.main = main
sys.argv = ["pythia-tl", "convert", *sys.argv[2:]]
from pythia_tl.launch import main as launch
launch()
"""


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated")],
)
def test_a_stop_between_start_up_and_the_command_line_is_one_line(
    signum: int, code: int, line: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = tmp_path / "o.safetensors"
    source = str(tiny_checkpoints["safetensors"])
    done = subprocess.run(
        [sys.executable, "-c", _STOP_IN_THE_GAP, str(int(signum)), source, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert (done.returncode, done.stderr.strip()) == (code, line)
    assert not out.exists()


def test_a_stop_noted_before_the_block_is_raised_as_it_begins() -> None:
    ran = False
    with pytest.raises(Terminated), stop_signals_raise([signal.SIGTERM]):
        ran = True
    assert not ran


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated")],
)
def test_a_stop_during_a_throttled_batch_ends_it_within_a_second_or_two(
    signum: int,
    code: int,
    line: str,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    tmp_path: Path,
) -> None:
    publish_suite(stand_in_hub, tmp_path / "hub-src")
    # Every resolve past the first two answers 429 with a long Retry-After: workers sleep.
    stand_in_hub.set_resolver_quota(2, window=600.0)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    models = [repo.split("/")[1] for repo in REPOS]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pythia_tl",
            "batch",
            *models,
            "--steps",
            "0,1",
            "-o",
            str(tmp_path / "o"),
            "--jobs",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while stand_in_hub.rate_limited == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the batch never met the rate limit"
        time.sleep(0.05)
    time.sleep(0.3)  # asleep in the wait now
    sent = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == line
    assert "unexpected" not in stderr
    assert took < 3.0, f"the batch took {took:.1f} s to stop"  # 0.8 s grace, under CI load


@pytest.mark.parametrize("blocked_name", ["output", "summary.json"])
def test_a_batch_error_never_names_a_flag_batch_lacks(
    blocked_name: str, stand_in_hub: StandInHub, hf_env: HfEnv, tmp_path: Path, cli: Run
) -> None:
    from batch_suite import output_path

    publish_suite(stand_in_hub, tmp_path / "hub-src")
    out = tmp_path / "o"
    blocked = output_path(out, REPOS[1], 0) if blocked_name == "output" else out / blocked_name
    blocked.mkdir(parents=True)  # a directory where a file goes
    (blocked / "keep").write_text("mine")
    status, stdout, stderr = cli(["batch", "pythia-70m", "--steps", "0", "-o", str(out)])
    assert status == 1, stderr
    assert "--force" not in stdout + stderr and "overwrite" not in stdout + stderr, stderr
    assert str(blocked) in stdout + stderr
    assert (blocked / "keep").read_text() == "mine"
