"""Faults: a conversion interrupted (SIGINT, SIGTERM, SIGKILL), a full disk, a download that
breaks off, and conversions racing to one output never leave a partial or corrupt output."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.file_download as hf_file_download
import pytest
from conftest import REPO_ROOT, HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub

from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.hub.errors import broken_download
from pythia_tl.output.atomic import remove_stale_temporaries, temp_path_for
from pythia_tl.source import resolve_source
from pythia_tl.verify import verify_file

REPO = "EleutherAI/pythia-70m"

# Runs the CLI with a progress callback that, after the first tensor is written (so the
# temporary file exists and holds data), announces it and then waits at a barrier: for a signal
# from the test, or for the other racing processes to reach the same point.
_PAUSING_CLI = """
import contextlib, os, sys, time
from pathlib import Path
import pythia_tl.cli.convert_cmd as convert_cmd
from pythia_tl.cli import main

folder, parties, hold = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

@contextlib.contextmanager
def pausing(label, silent):
    state = {"first": True}
    def on_bytes(n, total):
        if not state["first"]:
            return
        state["first"] = False
        (folder / f"ready-{os.getpid()}").write_text("mid-write")
        deadline = time.monotonic() + hold
        while len(list(folder.glob("ready-*"))) < parties and time.monotonic() < deadline:
            time.sleep(0.01)
        if parties == 1:
            time.sleep(hold)
    yield on_bytes

convert_cmd.byte_progress = pausing
main(sys.argv[4:])
"""


def start_paused(
    args: list[str], folder: Path, parties: int = 1, hold: float = 600
) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-c", _PAUSING_CLI, str(folder), str(parties), str(hold), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_mid_write(process: subprocess.Popen[str], folder: Path) -> None:
    # A bound on waiting, not a timing assertion: it only keeps a broken run from hanging.
    deadline = time.monotonic() + 120
    while not (folder / f"ready-{process.pid}").exists():
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"the conversion ended before writing: {stderr}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the conversion never reached its first tensor")
        time.sleep(0.02)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- interruption -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated")],
)
def test_an_interrupted_conversion_leaves_nothing_and_keeps_the_old_output(
    signum: int,
    code: int,
    message: str,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    hf_env: HfEnv,
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.safetensors"
    target.write_bytes(b"the previous output")
    process = start_paused(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "--force"], tmp_path
    )
    wait_until_mid_write(process, tmp_path)
    assert len(temporaries(out_dir)) == 1  # mid-write: the temporary file exists
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stderr.strip() == message
    assert temporaries(out_dir) == []
    assert target.read_bytes() == b"the previous output"


def test_a_killed_conversion_leaves_no_output_and_the_next_run_removes_its_temporary(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, hf_env: HfEnv, cli: Run
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.safetensors"
    process = start_paused(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target)], tmp_path
    )
    wait_until_mid_write(process, tmp_path)
    assert not target.exists()  # mid-write, only the temporary file exists
    process.kill()
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert not target.exists()
    (stale,) = temporaries(out_dir)
    assert f".pythia-tl-{socket.gethostname()}-{process.pid}-" in stale
    # Neighbours the next run must keep: one whose writer is alive (this process), and one
    # that is not named like ours.
    alive = temp_path_for(out_dir / "other.safetensors")
    alive.write_bytes(b"still being written")
    foreign = out_dir / f".notes.pythia-tl-{_dead_pid()}-not-ours.tmp"
    foreign.write_bytes(b"not ours")

    status, _, stderr = cli(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "-q"]
    )
    assert (status, stderr) == (0, ""), stderr
    assert temporaries(out_dir) == sorted([alive.name, foreign.name])
    assert verify_file(target).ok


def test_stale_temporaries_of_other_users_are_kept(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    dead = _dead_pid()
    host = socket.gethostname()
    mine = tmp_path / f".a.safetensors.pythia-tl-{host}-{dead}-0123abcd.tmp"
    theirs = tmp_path / f".b.safetensors.pythia-tl-{host}-{dead}-4567cdef.tmp"
    mine.write_bytes(b"")
    theirs.write_bytes(b"")
    os.chown(theirs, 12345, 12345)
    assert remove_stale_temporaries(tmp_path) == [mine]
    assert [p.name for p in tmp_path.iterdir()] == [theirs.name]


def test_temporaries_written_on_another_host_are_kept(tmp_path: Path) -> None:
    """A cluster's machines share the output folder; a pid means nothing on another host."""
    dead = _dead_pid()
    here = tmp_path / f".a.safetensors.pythia-tl-{socket.gethostname()}-{dead}-0123abcd.tmp"
    elsewhere = tmp_path / f".b.safetensors.pythia-tl-node-17.cluster-{dead}-4567cdef.tmp"
    here.write_bytes(b"")
    elsewhere.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [here]
    assert [p.name for p in tmp_path.iterdir()] == [elsewhere.name]


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


# --- a full disk --------------------------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 128 KiB tmpfs, mounted for the test (skipped where mounting is not permitted)."""
    folder = tmp_path / "tiny-fs"
    folder.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run([umount, "-l", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(
    tiny_filesystem: Path, tiny_checkpoints: TinyCheckpoints, cli: Run
) -> None:
    target = tiny_filesystem / "model.safetensors"
    status, stdout, stderr = cli(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target)]
    )
    assert (status, stdout) == (1, "")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {target}: no space left on device for the ")
    assert "the partial file was removed" in lines[0]
    assert list(tiny_filesystem.iterdir()) == []


def test_a_full_cache_disk_is_one_line(
    tiny_filesystem: Path,
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    run_cli,
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    target = tmp_path / "out.safetensors"
    # In a subprocess: everything the real command prints on stderr counts.
    status, stdout, stderr = run_cli(
        [
            "convert",
            REPO,
            "-o",
            str(target),
            "--cache-dir",
            str(tiny_filesystem),
            "--keep-downloads",
        ]
    )
    assert (status, stdout) == (1, "")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "no space left on device while downloading model.safetensors" in lines[0]
    assert not target.exists()


# --- downloads that break off -------------------------------------------------------------


class _NoSleep:
    """``time`` for huggingface_hub's download module, without the pause between retries."""

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        pass


def test_a_download_that_breaks_once_is_resumed(
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hf_file_download, "time", _NoSleep())
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    fault = stand_in_hub.break_file(REPO, "model.safetensors", offset=50_000, times=1)
    target = tmp_path / "out.safetensors"
    status, _, stderr = cli(["convert", REPO, "-o", str(target), "-q", "--keep-downloads"])
    assert (status, stderr) == (0, ""), stderr
    assert fault.fired == 1
    # Asked for twice: the broken body, then huggingface_hub's retry.
    assert [r.method for r in stand_in_hub.records if r.server == "cdn"] == ["GET", "GET"]
    assert verify_file(target).ok


def test_a_download_that_keeps_breaking_is_one_line(
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hf_file_download, "time", _NoSleep())
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    stand_in_hub.break_file(REPO, "model.safetensors", offset=50_000)
    target = tmp_path / "out.safetensors"
    status, stdout, stderr = cli(["convert", REPO, "-o", str(target), "--keep-downloads"])
    assert (status, stdout) == (1, "")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {REPO}@main: the download of model.safetensors broke off")
    assert "run the command again to resume it" in lines[0]
    assert not target.exists()
    # Once the Hub serves it whole, the same command succeeds.
    stand_in_hub.clear_faults()
    assert cli(["convert", REPO, "-o", str(target), "-q"])[0] == 0


@pytest.mark.parametrize(
    ("exc", "fragment"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError(errno.EACCES, "Permission denied"), "cannot write w.bin into the Hugging"),
        (OSError("Consistency check failed: file should be of size 9"), "broke off"),
        (ConnectionError("refused"), None),
        (ValueError("a bug, not a download"), None),
    ],
)
def test_broken_download_classifies_errors(exc: Exception, fragment: str | None) -> None:
    error = broken_download(exc, "org/repo@main", "w.bin")
    if fragment is None:
        assert error is None
    else:
        assert error is not None and fragment in str(error)
        assert str(error).startswith("org/repo@main: ")


# --- racing conversions -------------------------------------------------------------------


def _reference(tiny: TinyCheckpoints, tmp_path: Path, dtype: str) -> bytes:
    out = tmp_path / f"reference-{dtype}.safetensors"
    convert(resolve_source(str(tiny["safetensors"])), out, ConvertOptions(dtype=dtype))
    return out.read_bytes()


def test_conversions_racing_with_force_leave_one_complete_output(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, hf_env: HfEnv
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.safetensors"
    dtypes = ("float16", "float32")  # different outputs, so a mixture of the two would show
    processes = [
        start_paused(
            [
                "convert",
                str(tiny_checkpoints["safetensors"]),
                "-o",
                str(target),
                "--force",
                "--dtype",
                dtype,
            ],
            tmp_path,
            parties=len(dtypes),
            hold=60,
        )
        for dtype in dtypes
    ]
    results = [p.communicate(timeout=180) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    assert len(list(tmp_path.glob("ready-*"))) == 2  # both were mid-write at the same time
    assert target.read_bytes() in {_reference(tiny_checkpoints, tmp_path, d) for d in dtypes}
    assert temporaries(out_dir) == []
    assert verify_file(target).ok


def test_conversions_racing_without_force_let_exactly_one_win(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, hf_env: HfEnv
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.safetensors"
    dtypes = ("float16", "float32")
    processes = [
        start_paused(
            ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(target), "--dtype", dtype],
            tmp_path,
            parties=len(dtypes),
            hold=60,
        )
        for dtype in dtypes
    ]
    results = [p.communicate(timeout=180) for p in processes]
    codes = [p.returncode for p in processes]
    assert sorted(codes) == [0, 1], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert (
        results[loser][1].strip() == f"error: {target}: already exists (use --force to overwrite)"
    )
    assert target.read_bytes() == _reference(tiny_checkpoints, tmp_path, dtypes[winner])
    assert temporaries(out_dir) == []
