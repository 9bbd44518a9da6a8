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
from pythia_tl.source.schedule import TrainingCheckpoint, checkpoint_branch


def branches(names: list[str]) -> list[TrainingCheckpoint]:
    found = [checkpoint_branch(name) for name in names]
    assert all(c is not None for c in found)
    return [c for c in found if c is not None]


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=40))
def test_shards_one_to_n_cover_every_item_exactly_once(n_items: int, n_shards: int) -> None:
    items = sorted_items({"EleutherAI/pythia-70m": branches([f"step{n}" for n in range(n_items)])})
    taken = [item for k in range(1, n_shards + 1) for item in Shard(k, n_shards).take(items)]
    assert sorted(taken) == items
    assert len(taken) == len(set(taken))
    sizes = [len(Shard(k, n_shards).take(items)) for k in range(1, n_shards + 1)]
    assert max(sizes) - min(sizes) <= 1


_BRANCH = st.one_of(
    st.integers(min_value=0, max_value=143000).map(lambda n: f"step{n}"),
    st.tuples(st.integers(min_value=1, max_value=999), st.sampled_from("mbt")).map(
        lambda pair: f"{pair[0]}{pair[1]}_tokens"
    ),
)


@given(
    st.dictionaries(
        st.sampled_from(["EleutherAI/pythia-70m", "EleutherAI/pythia-1b", "org/other"]),
        st.sets(_BRANCH, max_size=20),
    )
)
def test_the_work_list_does_not_depend_on_the_order_models_and_branches_are_given(
    selected: dict[str, set[str]],
) -> None:
    forward = sorted_items({repo: branches(sorted(names)) for repo, names in selected.items()})
    backward = sorted_items(
        {repo: branches(sorted(names, reverse=True)) for repo, names in reversed(selected.items())}
    )
    assert forward == backward
    # By repository, then step branches by step, then token branches by token count.
    for repo in selected:
        mine = [item for item in forward if item.repo_id == repo]
        steps = [item.step for item in mine if item.step is not None]
        tokens = [c.tokens for c in branches([i.revision for i in mine]) if c.step is None]
        assert [item.step for item in mine] == [*steps, *[None] * len(tokens)]
        assert steps == sorted(steps) and tokens == sorted(tokens)
    assert [item.repo_id for item in forward] == sorted(item.repo_id for item in forward)
    assert len(set(forward)) == sum(len(names) for names in selected.values())


def test_a_work_item_is_a_revision_with_its_step_or_none() -> None:
    step, tokens = branches(["step250", "800b_tokens"])
    assert WorkItem.of("org/x", step) == WorkItem("org/x", (0, 250), "step250", 250)
    item = WorkItem.of("org/x", tokens)
    assert (item.revision, item.step, item.position) == ("800b_tokens", None, (1, 800 * 10**9))
    assert item.relative_output == Path("x") / "800b_tokens.safetensors"


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
