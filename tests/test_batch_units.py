"""The batch's parts on their own: judging existing outputs, linking duplicates, cleaning the
cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TinyCheckpoints
from safetensors.torch import save_file

from pythia_tl.batch.dedupe import duplicate_note, remove_stale_output, weights_key
from pythia_tl.batch.resume import Requirements, judge_existing
from pythia_tl.batch.work import WorkItem
from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.processing import Processing
from pythia_tl.source import resolve_source

REPO = "EleutherAI/pythia-70m"


@pytest.fixture(scope="module")
def converted(tiny_checkpoints: TinyCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output converted from a folder (so it records no commit), float16, raw weights."""
    out = tmp_path_factory.mktemp("judged") / "step0.safetensors"
    convert(resolve_source(str(tiny_checkpoints["safetensors"])), out)
    return out


def requirements_for(source: Path, **options: object) -> Requirements:
    return Requirements.of(str(source.resolve()), ConvertOptions(**options))  # type: ignore[arg-type]


def test_what_makes_an_output_reusable(
    converted: Path, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = tiny_checkpoints["safetensors"]
    same = requirements_for(folder)
    assert judge_existing(tmp_path / "absent.safetensors", same, "c" * 40).state == "missing"
    # The output records no commit (a folder has none): any commit asked for is another one.
    other = judge_existing(converted, same, "c" * 40)
    assert (other.state, other.commit) == ("other_commit", None)
    assert other.source_sha256 and other.bytes == converted.stat().st_size
    assert judge_existing(converted, same, None).state == "unverified"
    # auto accepts the recorded dtype; an explicit dtype must match it.
    assert judge_existing(converted, requirements_for(folder, dtype="float16"), None).state == (
        "unverified"
    )
    wider = judge_existing(converted, requirements_for(folder, dtype="float32"), None)
    assert (wider.state, wider.reason) == ("stale", "dtype float16, asked for float32")
    folded = replace(same, processing=Processing(fold_ln=True).passes)
    assert judge_existing(converted, folded, None).state == "stale"
    elsewhere = replace(same, source="EleutherAI/pythia-160m")
    assert judge_existing(converted, elsewhere, None).state == "stale"


def test_files_pythia_tl_did_not_write_are_foreign(tmp_path: Path) -> None:
    requirements = Requirements.of(REPO, ConvertOptions())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, plain, metadata={"format": "pt"})
    for path in (garbage, plain):
        judged = judge_existing(path, requirements, None)
        assert judged.state == "foreign" and "move it away" in judged.reason


def test_a_duplicate_gets_no_file_and_what_was_there_goes(tmp_path: Path) -> None:
    target = tmp_path / "step2.safetensors"
    target.write_bytes(b"an older output, or a link to another step's file")
    assert remove_stale_output(target) is True
    assert not target.exists() and remove_stale_output(target) is False
    repo = "EleutherAI/pythia-70m"
    early, late = (WorkItem(repo, (0, step), f"step{step}", step) for step in (2, 143000))
    assert duplicate_note(early, late) == (
        "step2 holds the same weight files as a later step, step143000"
    )
    assert duplicate_note(late, early) == (
        "step143000 holds the same weight files as an earlier step, step2"
    )
    # Branches named by tokens: later by token count, and never called steps.
    b240, b800 = (WorkItem(repo, (1, n * 10**9), f"{n}b_tokens", None) for n in (240, 800))
    assert duplicate_note(b240, b800) == (
        "240b_tokens holds the same weight files as a later checkpoint, 800b_tokens"
    )


def test_weights_keys_belong_to_one_repository() -> None:
    shas = {"model.safetensors": "a" * 64}
    assert weights_key(REPO, shas) == weights_key(REPO, {"other-name.safetensors": "a" * 64})
    assert weights_key(REPO, shas) != weights_key("EleutherAI/pythia-160m", shas)
    assert weights_key(REPO, {}) is None


def test_all_selects_token_branches_and_step_numbers_select_step_branches() -> None:
    from pythia_tl.batch.request import select_checkpoints
    from pythia_tl.batch.step_spec import parse_step_spec
    from pythia_tl.cli.errors import in_flags
    from pythia_tl.errors import UsageError
    from pythia_tl.source.names import ModelName
    from pythia_tl.source.schedule import from_branches

    names = ["1t_tokens", "step20", "240b_tokens", "step3", "main"]
    mixed = from_branches(ModelName("org/mixed"), {name: "c" * 40 for name in names})
    chosen = select_checkpoints(parse_step_spec("all"), mixed)
    assert [c.revision for c in chosen] == ["step3", "step20", "240b_tokens", "1t_tokens"]
    assert [c.revision for c in select_checkpoints(parse_step_spec("0:10"), mixed)] == ["step3"]

    by_tokens = from_branches(
        ModelName("org/tokens"), {f"{n}b_tokens": "c" * 40 for n in (800, 240, 400, 600)}
    )
    with pytest.raises(UsageError) as raised:
        select_checkpoints(parse_step_spec("1000"), by_tokens)
    assert in_flags(raised.value) == (
        "--steps 1000: the 4 checkpoint branches of org/tokens are named by tokens (240b_tokens, "
        "400b_tokens, 600b_tokens, ...), not steps; select them with --steps all"
    )
    assert str(raised.value).endswith("select them with steps='all'")


@pytest.mark.parametrize("old", [False, True])
def test_summaries_before_model_named_the_repository_are_still_read(
    tmp_path: Path, old: bool
) -> None:
    import json

    from pythia_tl.batch.summary import read_entries, recorded_duplicates, why_not_written

    # Before schema 1, "model" was the short name and "repo_id" the repository.
    names = (
        {"model": "pythia-70m", "repo_id": "EleutherAI/pythia-70m"}
        if old
        else {"model": "EleutherAI/pythia-70m", "model_name": "pythia-70m"}
    )
    entry = {
        **names,
        "step": 2,
        "revision": "step2",
        "status": "duplicate",
        "commit": "c" * 40,
        "source_sha256": {"model.safetensors": "a" * 64},
        "anomaly": "step2 holds step143000's weights",
        "weights_in": "pythia-70m/step143000.safetensors",
    }
    (tmp_path / "summary.json").write_text(json.dumps({"revisions": [entry]}))
    assert len(read_entries(tmp_path / "summary.json")) == 1
    assert recorded_duplicates(tmp_path / "summary.json") == {
        ("EleutherAI/pythia-70m", "step2"): ("c" * 40, {"model.safetensors": "a" * 64})
    }
    why = why_not_written(tmp_path / "pythia-70m" / "step2.safetensors")
    assert "its weights are in" in why and why.endswith("pythia-70m/step143000.safetensors")
