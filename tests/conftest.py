"""Shared fixtures: an isolated Hugging Face environment, the stand-in Hub, the CLI in a subprocess,
and tiny checkpoints built once per session.

huggingface_hub reads its environment (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, ...) once, when it is
imported, into ``huggingface_hub.constants``; setting variables afterwards changes nothing in this
process. So ``hf_env`` does both: it sets the variables in ``os.environ`` (inherited by every
subprocess, which is how the CLI is tested: ``run_cli``) and patches the constants for code under
test in this process, plus two copies made at import: ``hf_api.api.endpoint`` (behind the
module-level ``huggingface_hub.model_info`` and friends) and the progress-bar switch of
``huggingface_hub.utils.tqdm``. In-process code must read the constants when it runs (``HfApi()``
and ``hf_hub_download`` do): a name bound by ``from huggingface_hub.constants import ENDPOINT``
keeps the value it had at import.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import huggingface_hub.constants as hf_constants
import huggingface_hub.hf_api as hf_api
import huggingface_hub.utils._http as hf_http
import pytest
from hub_server import StandInHub
from synthetic import LAYOUTS, PythiaShape, write_checkpoint

from pythia_tl.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent

# Not an import: the package re-exports its tqdm class under the submodule's name.
hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

# Nothing listens there: with no stand-in Hub, a request that escapes offline mode fails at once.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"

_REMOVED_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HF_ENDPOINT",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_CO_STAGING",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_OFFLINE",
)


def _close_hf_session() -> None:
    """Close huggingface_hub's shared HTTP client (``reset_sessions`` before 1.0)."""
    close = getattr(hf_http, "close_session", None) or getattr(hf_http, "reset_sessions", None)
    if close is not None:
        close()


@dataclass
class HfEnv:
    """The isolated Hugging Face settings of one test; change them with the methods."""

    home: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def cache(self) -> Path:
        """huggingface_hub's download cache (HF_HUB_CACHE)."""
        return self.home / "hub"

    def set_endpoint(self, url: str) -> None:
        self.monkeypatch.setenv("HF_ENDPOINT", url)
        self.monkeypatch.setattr(hf_constants, "ENDPOINT", url)
        self.monkeypatch.setattr(
            hf_constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            url + "/{repo_id}/resolve/{revision}/{filename}",
        )
        self.monkeypatch.setattr(hf_api.api, "endpoint", url)

    def set_offline(self, offline: bool) -> None:
        if offline:
            self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            self.monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        self.monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HfEnv]:
    """huggingface_hub with a private HF_HOME, no token, no telemetry, no Xet, offline.

    Without ``stand_in_hub`` the endpoint is an address where nothing listens, and offline mode
    is on, so that nothing can reach the real Hub.
    """
    env = HfEnv(tmp_path / "hf-home", monkeypatch)
    for name in _REMOVED_VARS:
        monkeypatch.delenv(name, raising=False)
    settings = {
        "HF_HOME": str(env.home),
        "HF_HUB_CACHE": str(env.cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    patched = {
        "HF_HOME": str(env.home),
        "HF_HUB_CACHE": str(env.cache),
        "HUGGINGFACE_HUB_CACHE": str(env.cache),
        "HF_ASSETS_CACHE": str(env.home / "assets"),
        "HF_XET_CACHE": str(env.home / "xet"),
        "HF_TOKEN_PATH": str(env.home / "token"),
        "HF_STORED_TOKENS_PATH": str(env.home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(env.home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
    }
    for name, value in patched.items():
        # raising=False: older huggingface_hub versions lack some; setting them is harmless.
        monkeypatch.setattr(hf_constants, name, value, raising=False)
    monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    env.set_endpoint(UNREACHABLE_ENDPOINT)
    env.set_offline(True)
    yield env
    _close_hf_session()


@pytest.fixture
def stand_in_hub(hf_env: HfEnv) -> Iterator[StandInHub]:
    """A running stand-in Hub that huggingface_hub (here and in subprocesses) talks to."""
    with StandInHub() as hub:
        hf_env.set_endpoint(hub.url)
        hf_env.set_offline(False)
        yield hub
        # Pooled keep-alive connections point at this server: drop them with it.
        _close_hf_session()


Run = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], hf_env: HfEnv, monkeypatch: pytest.MonkeyPatch) -> Run:
    """The CLI in this process (fast): ``cli(args)`` -> (exit status, stdout, stderr).

    ``run_cli`` covers the real entry point in a subprocess. Tables are made wide enough not to
    wrap, so their rows can be matched.
    """
    monkeypatch.setenv("COLUMNS", "250")

    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.out, captured.err

    return run


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(hf_env: HfEnv) -> Callable[..., CliResult]:
    """Run ``python -m pythia_tl ARGS`` in a subprocess and return (returncode, stdout, stderr).

    The child gets this test's environment (so ``hf_env`` and, when requested, ``stand_in_hub``
    apply to it) with ``env`` laid over it; a value of None removes a variable.
    """

    def run(
        args: list[str],
        env: dict[str, str | None] | None = None,
        timeout: float = 300,
        cwd: Path | None = None,
    ) -> CliResult:
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
        )
        child_env.setdefault("NO_COLOR", "1")
        child_env.setdefault("COLUMNS", "200")
        for name, value in (env or {}).items():
            if value is None:
                child_env.pop(name, None)
            else:
                child_env[name] = value
        completed = subprocess.run(
            [sys.executable, "-m", "pythia_tl", *map(str, args)],
            env=child_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


TINY_SHAPE = PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=512, n_ctx=128)
TINY_SEED = 0
TINY_SHARD_BYTES = 64 * 1024


@dataclass(frozen=True)
class TinyCheckpoints:
    """Tiny checkpoints of one shape and seed (so of the same weights) in several layouts.

    Keys: each layout name (Hub-style config, ``embed_out``, legacy buffers in the ``.bin``
    files, sharded ones in several shards) and ``"v5-lm_head"`` (single safetensors file, the
    transformers 5 config spelling and head name).
    """

    shape: PythiaShape
    seed: int
    folders: dict[str, Path]

    def __getitem__(self, key: str) -> Path:
        return self.folders[key]


@pytest.fixture(scope="session")
def tiny_shape() -> PythiaShape:
    return TINY_SHAPE


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    """Built once per session; treat the folders as read-only."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    folders: dict[str, Path] = {}
    for layout in LAYOUTS:
        folders[layout] = root / layout
        write_checkpoint(
            folders[layout],
            TINY_SHAPE,
            layout=layout,
            seed=TINY_SEED,
            shard_bytes=TINY_SHARD_BYTES,
        )
    folders["v5-lm_head"] = root / "v5-lm_head"
    write_checkpoint(
        folders["v5-lm_head"],
        TINY_SHAPE,
        layout="safetensors",
        config_style="v5",
        head_name="lm_head",
        seed=TINY_SEED,
    )
    return TinyCheckpoints(TINY_SHAPE, TINY_SEED, folders)


def pytest_unconfigure(config: pytest.Config) -> None:
    """With triton loaded (torch imports it where it is installed), the interpreter's shutdown
    prints some 30 lines of ``nanobind: leaked ... functions``: nanobind's leak report of
    triton's bindings, not a failure of the tests, and after pytest's summary. Everything pytest
    reports is printed by now, so the shutdown's stderr goes to /dev/null."""
    if "triton" in sys.modules:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
