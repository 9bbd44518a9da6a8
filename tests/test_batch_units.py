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
    assert duplicate_note("step2", 2, "step143000", 143000) == (
        "step2 holds the same weight files as a later step, step143000"
    )


def test_weights_keys_belong_to_one_repository() -> None:
    shas = {"model.safetensors": "a" * 64}
    assert weights_key(REPO, shas) == weights_key(REPO, {"other-name.safetensors": "a" * 64})
    assert weights_key(REPO, shas) != weights_key("EleutherAI/pythia-160m", shas)
    assert weights_key(REPO, {}) is None


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
        ("EleutherAI/pythia-70m", 2): ("c" * 40, {"model.safetensors": "a" * 64})
    }
    why = why_not_written(tmp_path / "pythia-70m" / "step2.safetensors")
    assert "its weights are in" in why and why.endswith("pythia-70m/step143000.safetensors")
