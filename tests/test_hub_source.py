"""Converting from the (stand-in) Hub: by step, offline from the cache, and the errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import HfEnv, TinyCheckpoints
from hub_server import StandInHub
from safetensors import safe_open
from synthetic import write_checkpoint

REPO = "EleutherAI/pythia-70m"


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata())


def publish(hub: StandInHub, tiny: TinyCheckpoints, tmp_path: Path) -> dict[str, Path]:
    """Three step branches with different weights and layouts, plus main = step143000."""
    folders = {}
    for seed, (branch, layout) in enumerate(
        [("step0", "bin"), ("step1000", "safetensors-sharded"), ("step143000", "safetensors")]
    ):
        folder = tmp_path / "hub-src" / branch
        write_checkpoint(folder, tiny.shape, layout=layout, seed=seed, shard_bytes=64 * 1024)
        hub.add_revision(REPO, branch, folder)
        folders[branch] = folder
    hub.add_revision(REPO, "main", folders["step143000"])
    return folders


def test_convert_by_step_downloads_only_config_and_weights(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, run_cli
) -> None:
    folders = publish(stand_in_hub, tiny_checkpoints, tmp_path)
    stand_in_hub.clear_requests()
    result = run_cli(["convert", "pythia-70m", "--step", "1000", "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = tmp_path / "pythia-70m-step1000.safetensors"
    assert Path(report["output"]) == Path("pythia-70m-step1000.safetensors")
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["bytes"] == out.stat().st_size
    assert report["tensors"] == 16 * tiny_checkpoints.shape.n_layers + 5
    commit = stand_in_hub.commit_of(REPO, "step1000")
    assert (report["source"], report["revision"], report["commit"]) == (REPO, "step1000", commit)

    metadata = metadata_of(out)
    assert (metadata["source"], metadata["revision"], metadata["commit"]) == (
        REPO,
        "step1000",
        commit,
    )
    weights = sorted(p for p in folders["step1000"].iterdir() if p.suffix == ".safetensors")
    assert json.loads(metadata["source_files"]) == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights
    }
    assert json.loads(metadata["tl_config"])["tokenizer_name"] == REPO
    expected = {"config.json", "model.safetensors.index.json", *(p.name for p in weights)}
    assert stand_in_hub.downloaded_paths() == expected


def test_rerun_offline_is_served_from_the_cache(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, run_cli
) -> None:
    publish(stand_in_hub, tiny_checkpoints, tmp_path)
    online = run_cli(
        ["convert", "pythia-70m", "--step", "0", "-o", "a.safetensors", "--keep-downloads"],
        cwd=tmp_path,
    )
    assert online.returncode == 0, online.stderr
    stand_in_hub.clear_requests()
    offline = run_cli(
        ["convert", "pythia-70m", "--step", "0", "-o", "b.safetensors"],
        env={"HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    assert offline.returncode == 0, offline.stderr
    assert stand_in_hub.requests == []
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert a.read_bytes() == b.read_bytes()
    assert metadata_of(b)["commit"] == stand_in_hub.commit_of(REPO, "step0")


def test_offline_without_the_cache_is_one_clear_error(
    hf_env: HfEnv, tmp_path: Path, run_cli
) -> None:
    result = run_cli(["convert", "pythia-70m", "--step", "0"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: EleutherAI/pythia-70m@step0: offline mode is on and this revision is not in "
        "the local cache"
    ]
    assert not list(tmp_path.glob("*.safetensors"))


def test_safetensors_is_preferred_when_both_formats_exist(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, run_cli
) -> None:
    both = tmp_path / "both"
    shutil.copytree(tiny_checkpoints["bin"], both)
    shutil.copy(tiny_checkpoints["safetensors"] / "model.safetensors", both)
    stand_in_hub.add_revision(REPO, "main", both)
    result = run_cli(["convert", REPO, "-o", "out.safetensors"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stand_in_hub.downloaded_paths() == {"config.json", "model.safetensors"}
    assert list(json.loads(metadata_of(tmp_path / "out.safetensors")["source_files"])) == [
        "model.safetensors"
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["EleutherAI/pythia-nope"],
            1,
            "EleutherAI/pythia-nope: repository not found on the Hub",
        ),
        (
            ["pythia-70m", "--revision", "no-such-branch"],
            1,
            "EleutherAI/pythia-70m: revision 'no-such-branch' not found on the Hub",
        ),
        (
            ["pythia-70m", "--step", "1500"],
            2,
            "--step 1500: pythia-70m has no checkpoint at that step",
        ),
        (["pythia-71m"], 2, "unknown model name 'pythia-71m'"),
    ],
)
def test_hub_errors_are_one_line(
    args: list[str],
    code: int,
    message: str,
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    run_cli,
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    result = run_cli(["convert", *args], cwd=tmp_path)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_shard_missing_from_the_revision_is_named(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, run_cli
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoints["safetensors-sharded"], broken)
    lost = sorted(broken.glob("model-*.safetensors"))[-1]
    lost.unlink()
    stand_in_hub.add_revision(REPO, "main", broken)
    result = run_cli(["convert", REPO, "-o", "out.safetensors"], cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"names shard '{lost.name}'" in lines[0], lines
    assert not (tmp_path / "out.safetensors").exists()


def test_a_download_corrupted_in_transit_is_caught_by_its_sha256(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, run_cli
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    stand_in_hub.break_file(REPO, "model.safetensors", kind="corrupt", offset=4096)
    result = run_cli(["convert", REPO, "-o", "out.safetensors"], cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors: sha256" in lines[0], lines
    assert "the Hub announced" in lines[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".safetensors", ".tmp"))]
