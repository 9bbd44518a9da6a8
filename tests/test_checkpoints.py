"""``pythia-tl checkpoints`` and ``convert --checkpoint-index``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch_suite import STEPS, Suite, metadata_of, publish_suite
from conftest import HfEnv
from hub_server import StandInHub

from pythia_tl.cli import main
from pythia_tl.source.names import TOKENS_PER_STEP


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


@pytest.fixture
def suite(stand_in_hub: StandInHub, tmp_path: Path) -> Suite:
    return publish_suite(stand_in_hub, tmp_path / "hub-src")


def test_checkpoints_list_the_schedule_in_transformer_lens_order_with_missing_branches(
    suite: Suite, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformer_lens.loading_from_pretrained import PYTHIA_CHECKPOINTS

    code, out, err = run_main(["checkpoints", "pythia-70m", "--json"], capsys)
    assert code == 0, err
    listing = json.loads(out)
    assert (listing["model"], listing["origin"], listing["count"]) == (
        "EleutherAI/pythia-70m",
        "schedule+hub",
        154,
    )
    # The index is TransformerLens' checkpoint_index: a branch the Hub lacks keeps its place.
    assert [c["step"] for c in listing["checkpoints"]] == PYTHIA_CHECKPOINTS
    assert listing["checkpoints"][11] == {
        "index": 11,
        "step": 1000,
        "revision": "step1000",
        "tokens": 1000 * 2_097_152,
        "commit": suite.commit("EleutherAI/pythia-70m", 1000),
        "missing": False,
    }
    on_hub = {c["step"] for c in listing["checkpoints"] if not c["missing"]}
    assert on_hub == set(STEPS)
    assert all(c["commit"] is None for c in listing["checkpoints"] if c["missing"])

    code, out, _ = run_main(["checkpoints", "pythia-70m"], capsys)
    assert code == 0
    assert "EleutherAI/pythia-70m: 154 checkpoints, from the known schedule" in out
    assert "149 missing on the Hub" in out
    assert f"{143000 * TOKENS_PER_STEP:,}" in out


def test_a_repository_outside_the_suite_lists_its_own_branches_by_tokens(
    stand_in_hub: StandInHub, tiny_checkpoints, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = "togethercomputer/RedPajama-INCITE-Tiny"
    for branch in ("800b_tokens", "240b_tokens", "1t_tokens", "main", "notes"):
        stand_in_hub.add_revision(repo, branch, tiny_checkpoints["safetensors"])
    code, out, err = run_main(["checkpoints", repo, "--json"], capsys)
    assert code == 0, err
    listing = json.loads(out)
    assert listing["origin"] == "hub"
    assert [
        (c["index"], c["revision"], c["step"], c["tokens"]) for c in listing["checkpoints"]
    ] == [
        (0, "240b_tokens", None, 240 * 10**9),
        (1, "800b_tokens", None, 800 * 10**9),
        (2, "1t_tokens", None, 10**12),
    ]


def test_tl_and_pythia_tl_agree_on_every_checkpoint_index() -> None:
    from transformer_lens.loading_from_pretrained import (
        PYTHIA_CHECKPOINTS,
        PYTHIA_V0_CHECKPOINTS,
    )

    from pythia_tl.source.names import resolve_model_name
    from pythia_tl.source.schedule import from_schedule

    assert from_schedule(resolve_model_name("pythia-160m-seed3")).steps == PYTHIA_CHECKPOINTS
    assert from_schedule(resolve_model_name("pythia-1b-v0")).steps == PYTHIA_V0_CHECKPOINTS


@pytest.mark.parametrize(
    ("model", "count", "first", "second"),
    [("pythia-70m", 154, 0, 1), ("pythia-410m-deduped-v0", 143, 1000, 2000)],
)
def test_offline_checkpoints_come_from_the_known_schedule(
    model: str,
    count: int,
    first: int,
    second: int,
    hf_env: HfEnv,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(["checkpoints", model, "--json"], capsys)
    assert code == 0, err
    listing = json.loads(out)
    assert (listing["origin"], listing["count"]) == ("schedule", count)
    steps = [c["step"] for c in listing["checkpoints"]]
    assert steps[:2] == [first, second] and steps[-1] == 143000
    assert steps == sorted(set(steps))
    assert [c["index"] for c in listing["checkpoints"]] == list(range(count))
    assert {c["commit"] for c in listing["checkpoints"]} == {None}


def test_offline_a_repository_outside_the_suite_has_no_schedule(
    hf_env: HfEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["checkpoints", "someone/gpt-neox-tiny"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: someone/gpt-neox-tiny: offline mode is on, and the ")


@pytest.mark.parametrize(("index", "step"), [(-1, 143000), (0, 0), (1, 1), (-154, 0)])
def test_convert_by_checkpoint_index_takes_the_step_of_the_schedule(
    index: int,
    step: int,
    suite: Suite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["convert", "pythia-70m", "--checkpoint-index", str(index)], capsys)
    assert code == 0, err
    metadata = metadata_of(tmp_path / f"pythia-70m-step{step}.safetensors")
    assert (metadata["revision"], metadata["commit"]) == (
        f"step{step}",
        suite.commit("EleutherAI/pythia-70m", step),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["pythia-70m", "--checkpoint-index", "154"],
            "--checkpoint-index 154: pythia-70m has 154 checkpoints, so the index must be in "
            "-154..153",
        ),
        (
            ["pythia-70m-v0", "--checkpoint-index", "-144"],
            "--checkpoint-index -144: pythia-70m-v0 has 143 checkpoints",
        ),
        (
            ["pythia-70m", "--step", "0", "--checkpoint-index", "0"],
            "--step and --checkpoint-index are alternatives: give one of them",
        ),
    ],
)
def test_checkpoint_index_errors_are_usage_errors(
    args: list[str], message: str, hf_env: HfEnv, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_main(["convert", *args, "-o", str(tmp_path / "x.safetensors")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "x.safetensors").exists()


def test_checkpoint_index_does_not_apply_to_a_folder(
    hf_env: HfEnv, tiny_checkpoints, capsys: pytest.CaptureFixture
) -> None:
    folder = str(tiny_checkpoints["safetensors"])
    code, _, err = run_main(["convert", folder, "--checkpoint-index", "-1"], capsys)
    assert code == 2
    assert (
        err.strip()
        == f"error: {folder} is a local folder: --checkpoint-index applies to Hub sources"
    )


def test_checkpoints_into_a_pipe_keep_every_commit_whole(suite: Suite, run_cli) -> None:
    listed = run_cli(["checkpoints", "pythia-70m"], env={"COLUMNS": "60"})
    assert listed.returncode == 0, listed.stderr
    for step in STEPS:
        assert suite.commit("EleutherAI/pythia-70m", step) in listed.stdout


def test_batch_on_a_repository_outside_the_suite_takes_its_own_step_branches(
    stand_in_hub: StandInHub, tiny_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = "someone/neox-mini"
    for branch in ("step10000", "step5", "step250", "main", "notes"):
        stand_in_hub.add_revision(repo, branch, tiny_checkpoints["safetensors"])
    code, out, err = run_main(["checkpoints", repo, "--json"], capsys)
    assert code == 0, err
    assert [c["revision"] for c in json.loads(out)["checkpoints"]] == [
        "step5", "step250", "step10000",
    ]  # fmt: skip

    folder = tmp_path / "out"
    code, out, err = run_main(
        ["batch", repo, "--steps", "6:10000", "-o", str(folder), "--json"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    # The stand-in serves the same files on every branch: the latest step converts.
    assert [(e["revision"], e["status"]) for e in report["revisions"]] == [
        ("step250", "duplicate"),
        ("step10000", "converted"),
    ]
    code, _, err = run_main(["batch", repo, "--steps", "7", "-o", str(folder)], capsys)
    assert code == 2 and "--steps" in err and "no checkpoint at step 7" in err

    # A summary whose entries are keyed by step alone still resumes: nothing converts again,
    # and each revision keeps one entry.
    summary = folder / "summary.json"
    document = json.loads(summary.read_text())
    for entry in document["revisions"]:
        del entry["revision"]
    summary.write_text(json.dumps(document))
    code, out, err = run_main(
        ["batch", repo, "--steps", "6:10000", "-o", str(folder), "--json"], capsys
    )
    assert code == 0, err
    assert [(e["revision"], e["status"]) for e in json.loads(out)["revisions"]] == [
        ("step250", "duplicate"),
        ("step10000", "skipped"),
    ]


def test_a_batch_of_token_named_branches_converts_each_as_convert_revision_does(
    stand_in_hub: StandInHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file
    from synthetic import PythiaShape, write_checkpoint

    repo = "togethercomputer/RedPajama-INCITE-Tiny"
    sequential = PythiaShape(
        n_layers=2, d_model=32, n_heads=2, d_vocab=64, n_ctx=32, rotary_pct=1.0,
        parallel_residual=False,
    )  # fmt: skip
    # 400b_tokens serves 800b_tokens' files: a duplicate of a later checkpoint.
    seeds = {"800b_tokens": 1, "1t_tokens": 2, "240b_tokens": 0, "400b_tokens": 1, "main": 2}
    for branch, seed in seeds.items():
        write_checkpoint(tmp_path / "src" / branch, sequential, layout="safetensors", seed=seed)
        stand_in_hub.add_revision(repo, branch, tmp_path / "src" / branch)
    order = ["240b_tokens", "400b_tokens", "800b_tokens", "1t_tokens"]

    # A step number or range: the branches carry none, and the error says what they are.
    suite = tmp_path / "suite"
    code, _, err = run_main(["batch", repo, "--steps", "0-1000", "-o", str(suite)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --steps 0-1000: the 4 checkpoint branches of " + repo)
    assert "named by tokens (240b_tokens, 400b_tokens, 800b_tokens, ...)" in err
    assert "select them with --steps all" in err
    assert not suite.exists()

    # A trace stacks over steps: branches named by tokens have none to record.
    traced = tmp_path / "trace.safetensors"
    code, _, err = run_main(
        ["trace", repo, "--tensors", "embed.W_E", "--steps", "all", "-o", str(traced)], capsys
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --steps all: a trace stacks its keys over training steps")
    assert "4 checkpoint branches named by tokens" in err
    assert not traced.exists() and not (tmp_path / "trace.safetensors.parts").exists()

    code, out, err = run_main(
        ["batch", repo, "--steps", "all", "-o", str(suite), "--dry-run", "--json"], capsys
    )
    assert code == 0, err
    planned = json.loads(out)["revisions"]
    assert [(r["revision"], r["step"], r["status"]) for r in planned] == [
        ("240b_tokens", None, "converted"),
        ("400b_tokens", None, "duplicate"),
        ("800b_tokens", None, "converted"),
        ("1t_tokens", None, "converted"),
    ]
    assert not suite.exists()

    code, out, err = run_main(["batch", repo, "--steps", "all", "-o", str(suite), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    entries = report["revisions"]
    assert [(e["revision"], e["step"], e["status"]) for e in entries] == [
        ("240b_tokens", None, "converted"),
        ("400b_tokens", None, "duplicate"),
        ("800b_tokens", None, "converted"),
        ("1t_tokens", None, "converted"),
    ]
    duplicate = entries[1]
    assert duplicate["duplicate_of"] == "800b_tokens"
    assert duplicate["anomaly"] == (
        "400b_tokens holds the same weight files as a later checkpoint, 800b_tokens"
    )
    assert duplicate["weights_in"] == "RedPajama-INCITE-Tiny/800b_tokens.safetensors"
    on_disk = json.loads((suite / "summary.json").read_text())["revisions"]
    assert [(e["revision"], e["step"]) for e in on_disk] == [(b, None) for b in order]
    folder = suite / "RedPajama-INCITE-Tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{b}.safetensors" for b in order if b != "400b_tokens"
    )

    for branch in ("240b_tokens", "800b_tokens", "1t_tokens"):
        alone = tmp_path / f"{branch}.safetensors"
        code, _, err = run_main(["convert", repo, "--revision", branch, "-o", str(alone)], capsys)
        assert code == 0, err
        batched = folder / f"{branch}.safetensors"
        expected, got = load_file(alone), load_file(batched)
        assert expected.keys() == got.keys()
        assert all(torch_equal(expected[k], got[k]) for k in expected)
        metadata = metadata_of(batched)
        assert metadata == metadata_of(alone)
        assert metadata["revision"] == branch
        assert metadata["commit"] == stand_in_hub.commit_of(repo, branch)
        cfg = json.loads(metadata["tl_config"])
        assert cfg["parallel_attn_mlp"] is False and cfg["rotary_dim"] == cfg["d_head"] == 16

    # A rerun skips every one of them, the duplicate settled from the summary.
    code, out, err = run_main(["batch", repo, "--steps", "all", "-o", str(suite), "--json"], capsys)
    assert code == 0, err
    rerun = json.loads(out)["revisions"]
    assert [(e["revision"], e["status"]) for e in rerun] == [
        ("240b_tokens", "skipped"),
        ("400b_tokens", "duplicate"),
        ("800b_tokens", "skipped"),
        ("1t_tokens", "skipped"),
    ]


def torch_equal(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return a.dtype == b.dtype and torch.equal(a, b)
