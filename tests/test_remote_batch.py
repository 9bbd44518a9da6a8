"""Batch against the stand-in Hub: the cost known before paying it (``--dry-run``), and a
selection streamed for a whole suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch_suite import DUPLICATE, REPOS, STEPS, STEPS_SPEC, SUITE_SHAPE, Suite, publish_suite
from conftest import HfEnv, Run
from hub_server import StandInHub
from safetensors import safe_open
from synthetic import write_checkpoint

from pythia_tl.output.metadata import read_output
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES

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
    entries = {(r["model"], r["revision"]): r for r in cost["revisions"]}
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
        (r["model"], int(r["revision"].removeprefix("step"))): r["status"]
        for r in json.loads(stdout)["revisions"]
    }
    cli([*args, "-q"])
    summary = json.loads((out / "summary.json").read_text())
    done = {(e["model"], e["step"]): e["status"] for e in summary["revisions"]}
    as_run = {"converted": "converted", "skipped": "skipped", "duplicate": "duplicate"}
    as_run |= {"missing": "failed", "refused": "failed"}
    assert {item: as_run[status] for item, status in planned.items()} == done
    assert planned[moved] == "skipped" and planned[("EleutherAI/pythia-160m", 1)] == "refused"


def test_dry_run_counts_the_requests_the_run_makes_and_each_revision_stays_within_four(
    stand_in_hub: StandInHub, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    repo = "EleutherAI/pythia-70m"
    steps = (1000, 2000, 3000)
    for seed, step in enumerate(steps):
        folder = tmp_path / f"src-{step}"
        write_checkpoint(
            folder, SUITE_SHAPE, layout="safetensors-sharded", seed=seed, shard_bytes=8 << 10
        )
        for name in TOKENIZER_FILES:  # the same bytes at every step, as on the Hub
            (folder / name).write_text(json.dumps({"file": name}))
        stand_in_hub.add_revision(repo, f"step{step}", folder)
    shards = len(list(folder.glob("*.safetensors")))
    args = ["batch", "pythia-70m", "--steps", ",".join(map(str, steps)), "-o", str(tmp_path / "o")]
    status, stdout, stderr = cli([*args, "--dry-run", "--json", "--cache-dir", str(tmp_path / "c")])
    assert status == 0, stderr
    cost = json.loads(stdout)
    assert cost["exceeds_window_of"] == [] and cost["rate_limit_window_seconds"] == 300
    stand_in_hub.clear_requests()
    status, _, stderr = cli([*args, "-q"])
    assert status == 0, stderr
    assert stand_in_hub.resolver_requests == cost["resolve_requests"]
    assert stand_in_hub.api_requests == cost["api_requests"]
    per_revision = [r["resolve_requests"] - shards for r in cost["revisions"]]
    # config.json and the index: a HEAD each, and a GET unless the same bytes are cached; the
    # tokenizer files once per batch.
    assert sorted(per_revision) == [2, 2, 4 + 2 * len(TOKENIZER_FILES)]
    # Every output records the tokenizer files at the one commit they were downloaded at.
    recorded = {
        json.dumps(read_output(tmp_path / "o" / "pythia-70m" / f"step{step}.safetensors").tokenizer)
        for step in steps
    }
    assert len(recorded) == 1
    (record,) = (json.loads(r) for r in recorded)
    assert record["revision"] in {stand_in_hub.commit_of(repo, f"step{s}") for s in steps}


def test_dry_run_says_when_a_run_exceeds_one_rate_limit_window(
    suite: Suite, hf_env: HfEnv, cli: Run, tmp_path: Path
) -> None:
    from pythia_tl.hub.quotas import exceeded

    args = ["batch", *MODELS, "--steps", STEPS_SPEC, "-o", str(tmp_path / "o"), "--dry-run"]
    status, stdout, _ = cli([*args, "--json"])
    cost = json.loads(stdout)
    assert cost["resolve_requests"] > 0 and cost["exceeds_window_of"] == []
    assert exceeded(3_001, 0) == ["anonymous"]
    assert exceeded(0, 1_001) == ["anonymous", "free account"]
    status, stdout, _ = cli(args)
    assert status == 0 and f"{cost['resolve_requests']} resolve and" in stdout
