"""``--shard K/N``: a deterministic partition of the work list, and shards that share nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from batch_suite import STEPS_SPEC, Suite, output_path, publish_suite
from conftest import REPO_ROOT
from hub_server import StandInHub
from hypothesis import given
from hypothesis import strategies as st

from pythia_tl.batch.work import Shard, WorkItem, parse_shard, sorted_items
from pythia_tl.cli.errors import in_flags
from pythia_tl.errors import UsageError


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=40))
def test_shards_one_to_n_cover_every_item_exactly_once(n_items: int, n_shards: int) -> None:
    items = sorted_items({"EleutherAI/pythia-70m": range(n_items)})
    taken = [item for k in range(1, n_shards + 1) for item in Shard(k, n_shards).take(items)]
    assert sorted(taken) == items
    assert len(taken) == len(set(taken))
    sizes = [len(Shard(k, n_shards).take(items)) for k in range(1, n_shards + 1)]
    assert max(sizes) - min(sizes) <= 1


@given(
    st.dictionaries(
        st.sampled_from(["EleutherAI/pythia-70m", "EleutherAI/pythia-1b", "org/other"]),
        st.sets(st.integers(min_value=0, max_value=143000), max_size=20),
    )
)
def test_the_work_list_does_not_depend_on_the_order_models_and_steps_are_given(
    selected: dict[str, set[int]],
) -> None:
    forward = sorted_items({repo: sorted(steps) for repo, steps in selected.items()})
    backward = sorted_items(
        {repo: sorted(steps, reverse=True) for repo, steps in reversed(selected.items())}
    )
    assert forward == backward
    assert forward == sorted(
        WorkItem(repo, step) for repo, steps in selected.items() for step in steps
    )


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "3", "a/b", "1/2/3", "-1/2"])
def test_bad_shards_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"^shard ") as raised:
        parse_shard(text)
    assert in_flags(raised.value).startswith(f"--shard {text!r}: ")


def test_shard_parsing() -> None:
    assert parse_shard("2/5") == Shard(2, 5)
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)


def test_shards_run_at_once_split_a_suite_with_no_shared_file(
    stand_in_hub: StandInHub, tmp_path: Path
) -> None:
    suite: Suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    n = 3
    command = [sys.executable, "-m", "pythia_tl", "batch", "pythia-70m", "pythia-160m"]
    command += ["--steps", STEPS_SPEC, "-o", str(out), "--quiet"]
    shards = [
        subprocess.Popen(
            [*command, "--shard", f"{k}/{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(1, n + 1)
    ]
    for shard in shards:
        stdout, stderr = shard.communicate(timeout=300)
        assert shard.returncode == 0, stderr
        assert stdout == "" and stderr == ""

    summaries = [
        json.loads((out / f"summary-{k}-of-{n}.json").read_text()) for k in range(1, n + 1)
    ]
    assert not (out / "summary.json").exists()
    taken = [(e["model"], e["step"]) for s in summaries for e in s["revisions"]]
    assert sorted(taken) == suite.items()
    assert len(taken) == len(set(taken))
    for summary in summaries:
        assert summary["work_list_size"] == len(suite.items())
        assert {e["status"] for e in summary["revisions"]} <= {"converted", "duplicate"}
    for repo_id, step in suite.items():
        assert output_path(out, repo_id, step).is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
