"""Batch against the stand-in Hub: the cost known before paying it (``--dry-run``), and a
selection streamed for a whole suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch_suite import DUPLICATE, REPOS, STEPS, STEPS_SPEC, Suite, publish_suite
from conftest import HfEnv, Run
from hub_server import StandInHub
from safetensors import safe_open

MODELS = [repo.split("/")[1] for repo in REPOS]


@pytest.fixture
def suite(stand_in_hub: StandInHub, tmp_path: Path) -> Suite:
    return publish_suite(stand_in_hub, tmp_path / "hub-src")


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def test_dry_run_lists_the_cost_from_listings_and_headers(
    suite: Suite, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    suite.hub.remove_revision("EleutherAI/pythia-160m", "step1")
    suite.hub.clear_requests()
    out = tmp_path / "out"
    status, stdout, stderr = cli(
        ["batch", *MODELS, "--steps", STEPS_SPEC, "-o", str(out), "--dry-run", "--json"]
    )
    assert status == 0, stderr
    cost = json.loads(stdout)
    assert isinstance(cost["fetch_bytes"], int) and isinstance(cost["write_bytes"], int)
    entries = {(r["repo_id"], r["revision"]): r for r in cost["revisions"]}
    assert len(entries) == len(REPOS) * len(STEPS)
    missing = entries[("EleutherAI/pythia-160m", "step1")]
    assert missing["missing"] is True and missing["fetch_bytes"] == 0
    repo, step, original = DUPLICATE
    # The latest step of a group converts, as in the run; the earlier one is its duplicate.
    duplicate = entries[(repo, f"step{step}")]
    assert duplicate["duplicate_of"] == f"step{original}" and duplicate["fetch_bytes"] == 0
    for (repo_id, revision), entry in entries.items():
        if entry["missing"] or entry["duplicate_of"]:
            continue
        step = int(revision.removeprefix("step"))
        assert entry["commit"] == suite.commit(repo_id, step)
        assert entry["fetch_bytes"] == weight_bytes(suite.folders[(repo_id, step)])
        assert entry["write_bytes"] > 0
    assert cost["fetch_bytes"] == sum(e["fetch_bytes"] for e in entries.values())
    assert cost["write_bytes"] == sum(e["write_bytes"] for e in entries.values())
    # Nothing converted, nothing of the weights stored (test_remote.py measures the bytes a
    # header read fetches, on files larger than these).
    assert not out.exists() or not list(out.rglob("*.safetensors"))
    assert not [p for p in hf_env.cache.rglob("*") if p.suffix in (".bin", ".safetensors")]

    # The write estimate is the size a real run writes.
    status, _, stderr = cli(["batch", *MODELS, "--steps", "1000", "-o", str(out), "--quiet"])
    assert status == 0, stderr
    for repo_id in REPOS:
        written = out / repo_id.split("/")[1] / "step1000.safetensors"
        assert written.stat().st_size == entries[(repo_id, "step1000")]["write_bytes"]


def test_a_batch_with_a_selection_streams_only_those_bytes(
    suite: Suite, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    suite.hub.clear_requests()
    out = tmp_path / "out"
    status, _, stderr = cli(
        ["batch", *MODELS, "--steps", STEPS_SPEC, "-o", str(out), "--tensors", "unembed.W_U", "-q"]
    )
    assert status == 0, stderr
    # (The tiny .bin files are fetched almost whole for their zip directories; the safetensors
    # files show the saving.)
    names = {p.name for f in suite.folders.values() for p in f.glob("*.safetensors")}
    total = sum(p.stat().st_size for f in suite.folders.values() for p in f.glob("*.safetensors"))
    assert sum(suite.hub.served_bytes(name) for name in names) < total / 2
    for path in out.rglob("step*.safetensors"):
        with safe_open(path, "pt") as handle:
            assert list(handle.keys()) == ["unembed.W_U"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"]["selection"] == {"tensors": ["unembed.W_U"], "layers": None}
    # Rerunning with the same selection finds every output up to date.
    status, stdout, _ = cli(
        [
            "batch",
            *MODELS,
            "--steps",
            STEPS_SPEC,
            "-o",
            str(out),
            "--tensors",
            "unembed.W_U",
            "--json",
        ]
    )
    assert json.loads(stdout)["counts"]["converted"] == 0


def test_dry_run_says_what_the_run_then_does(
    suite: Suite, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli(["batch", *MODELS, "--steps", "1000", "-o", str(out), "-q"])[0] == 0
    # The branch moves to a new commit with the same weights: up to date, as the run sees it.
    moved = ("EleutherAI/pythia-70m", 1000)
    suite.hub.add_revision(moved[0], "step1000", suite.folders[moved], commit="f" * 40)
    # A file pythia-tl did not write, where an output goes: the run refuses to touch it.
    foreign = out / "pythia-160m" / "step1.safetensors"
    foreign.write_bytes(b"not mine")
    suite.hub.remove_revision("EleutherAI/pythia-160m", "step2")
    args = ["batch", *MODELS, "--steps", STEPS_SPEC, "-o", str(out)]
    status, stdout, stderr = cli([*args, "--dry-run", "--json"])
    assert status == 0, stderr
    planned = {
        (r["repo_id"], int(r["revision"].removeprefix("step"))): r["status"]
        for r in json.loads(stdout)["revisions"]
    }
    cli([*args, "-q"])
    summary = json.loads((out / "summary.json").read_text())
    done = {(e["repo_id"], e["step"]): e["status"] for e in summary["revisions"]}
    as_run = {"convert": "converted", "skip": "skipped", "duplicate": "duplicate"}
    as_run |= {"missing": "failed", "refused": "failed"}
    assert {item: as_run[status] for item, status in planned.items()} == done
    assert planned[moved] == "skip" and planned[("EleutherAI/pythia-160m", 1)] == "refused"
