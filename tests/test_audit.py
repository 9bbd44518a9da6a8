"""``pythia-tl audit`` against the stand-in Hub: each known class of checkpoint anomaly is built
into a small suite, and the audit must find it (and only it) with the right exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from batch_suite import SHARD_BYTES, SUITE_SHAPE
from hub_server import StandInHub
from synthetic import Layout, write_checkpoint

from pythia_tl.audit.known import known_anomalies
from pythia_tl.audit.run import audit_models
from pythia_tl.batch.step_spec import parse_step_spec
from pythia_tl.source.names import resolve_model_name

A = "EleutherAI/pythia-14m"
B = "EleutherAI/pythia-31m"
STEPS = "0,1,2,1000,2000,3000,4000,5000,143000"
# What the audit of A and B must say of each revision of A.
EXPECTED_A = {
    "step0": "identical",  # = step1 (#83)
    "step1": "identical",
    "step2": "identical",  # = B's step0: the same files in another repository
    "step1000": "missing",
    "step2000": "shares_shards",  # holds main's first shard (#206)
    "step3000": "identical",  # main's files under a step's name (#205)
    "step4000": "incomplete",  # its index names a shard it lacks
    "step5000": "ok",  # step2's tensors re-serialised as .bin: only --deep sees it
    "step143000": "ok",  # = main, as it should be
    "main": "ok",
}


def _write(root: Path, name: str, seed: int, layout: Layout) -> Path:
    folder = root / name
    write_checkpoint(folder, SUITE_SHAPE, layout=layout, seed=seed, shard_bytes=SHARD_BYTES)
    return folder


@pytest.fixture
def anomalous_suite(stand_in_hub: StandInHub, tmp_path: Path) -> StandInHub:
    hub, root = stand_in_hub, tmp_path / "src"
    final = _write(root, "final", 143000, "safetensors-sharded")
    early = _write(root, "early", 0, "safetensors")
    step2 = _write(root, "step2", 2, "safetensors")
    step2000 = _write(root, "step2000", 2000, "safetensors-sharded")
    first_shard = sorted(final.glob("model-00001-*.safetensors"))[0]
    shutil.copy(first_shard, step2000 / first_shard.name)
    step4000 = _write(root, "step4000", 4000, "safetensors-sharded")
    sorted(step4000.glob("model-0000*.safetensors"))[-1].unlink()
    step5000 = _write(root, "step5000", 2, "bin")  # step2's weights, another format
    branches = {
        "step0": early,
        "step1": early,
        "step2": step2,
        "step2000": step2000,
        "step3000": final,
        "step4000": step4000,
        "step5000": step5000,
        "step143000": final,
        "main": final,
    }
    for branch, folder in branches.items():
        hub.add_revision(A, branch, folder)
    b_final = _write(root, "b-final", 7, "safetensors")
    for branch, folder in {"step0": step2, "step143000": b_final, "main": b_final}.items():
        hub.add_revision(B, branch, folder)
    return hub


def _statuses(document: dict, repo_id: str) -> dict[str, str]:
    return {r["revision"]: r["status"] for r in document["revisions"] if r["model"] == repo_id}


def _rows(document: dict, repo_id: str) -> dict[str, dict]:
    return {r["revision"]: r for r in document["revisions"] if r["model"] == repo_id}


def test_audit_finds_each_anomaly_class_from_listings(anomalous_suite: StandInHub, cli) -> None:
    anomalous_suite.clear_requests()
    code, out, err = cli(["audit", "pythia-14m", "pythia-31m", "--steps", STEPS, "--json"])
    assert code == 1
    assert err.strip().splitlines() == [
        "error: 15 of 20 revisions have anomalies (11 not in a known report)"
    ]
    document = json.loads(out)
    assert _statuses(document, A) == EXPECTED_A
    missing = dict.fromkeys(f"step{s}" for s in (1, 2, 1000, 2000, 3000, 4000, 5000))
    assert _statuses(document, B) == {
        "step0": "identical",
        **{revision: "missing" for revision in missing},
        "step143000": "ok",
        "main": "ok",
    }
    rows = _rows(document, A)
    assert rows["step1"]["same_as"] == [f"{A}@step0"]
    assert rows["step1"]["known"] == ["EleutherAI/pythia#83"]
    assert rows["step2"]["same_as"] == [f"{B}@step0"]
    assert rows["step3000"]["same_as"] == [f"{A}@main", f"{A}@step143000"]
    assert rows["step3000"]["same_as_main"] is True and rows["step3000"]["known"] == []
    assert rows["step1000"]["index"] == 11 and rows["step1000"]["commit"] is None
    shared = rows["step2000"]["shared_files"]
    assert len(shared) == 1 and next(iter(shared)).startswith("model-00001-of-")
    assert next(iter(shared.values())) == [f"{A}@main", f"{A}@step3000", f"{A}@step143000"]
    assert rows["step4000"]["missing_files"] and rows["step4000"]["status"] == "incomplete"
    assert document["counts"]["missing"] == 8 and document["exit_code"] == 1
    assert document["fingerprint_bytes"] is None
    # From listings alone: no weight file was downloaded, not even in part.
    weights = {
        p for p in anomalous_suite.downloaded_paths() if p.endswith((".safetensors", ".bin"))
    }
    assert weights == set()


def test_deep_audit_finds_re_serialised_tensors_by_small_ranges(
    anomalous_suite: StandInHub,
) -> None:
    anomalous_suite.clear_requests()
    models = [resolve_model_name(A), resolve_model_name(B)]
    report = audit_models(models, parse_step_spec(STEPS), deep=True)
    found = {f.ref.revision: f for f in report.findings if f.ref.repo_id == A}
    assert {rev: f.status for rev, f in found.items()} == {**EXPECTED_A, "step5000": "same_tensors"}
    assert [str(ref) for ref in found["step5000"].same_as] == [f"{A}@step2", f"{B}@step0"]
    assert report.not_fingerprinted == {}
    # Fingerprints read a few KB per tensor, not the files: a fraction of what they hold.
    assert 0 < report.fingerprint_bytes <= anomalous_suite.served_bytes()
    per_revision = 21 * 3 * 1024  # 21 tensors, at most three 1 KiB windows each
    assert report.fingerprint_bytes <= 12 * per_revision


def test_a_clean_suite_exits_0_and_missing_branches_exit_1(
    anomalous_suite: StandInHub, cli
) -> None:
    code, out, err = cli(["audit", "pythia-31m", "--steps", "0,143000"])
    assert (code, err) == (0, "")
    assert "audit of EleutherAI/pythia-31m (steps 0,143000): 3 ok" in out
    code, out, err = cli(["audit", "pythia-31m"])
    assert code == 1
    assert "audit of EleutherAI/pythia-31m (steps all): 3 ok, 152 missing" in out
    assert err == "error: 152 of 155 revisions have anomalies (152 not in a known report)\n"
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [row[1:4] for row in rows[:3]] == [
        ["step0", "0", "ok"],
        ["step1", "1", "missing"],
        ["step2", "2", "missing"],
    ]


def test_known_anomalies_name_their_issues() -> None:
    reports = known_anomalies()
    issues = {report.issue for report in reports}
    for number in (205, 195, 83, 198, 206, 108, 141, 202, 203):
        assert f"EleutherAI/pythia#{number}" in issues
    assert {"allenai/OLMo#915", "allenai/OLMo#842"} <= issues
    twelve = next(r for r in reports if r.issue == "EleutherAI/pythia#206")
    assert twelve.explains("EleutherAI/pythia-12b", "step50000", 50000, "shares_shards")
    assert not twelve.explains("EleutherAI/pythia-12b", "step51000", 51000, "shares_shards")
    assert not twelve.explains("EleutherAI/pythia-12b-deduped", "step50000", 50000, "shares_shards")
