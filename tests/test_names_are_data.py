"""Names are data (issue #18, item 2): revisions, model names, branch names and commits from the
user or the Hub are checked before they reach huggingface_hub or a path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import HfEnv, TinyCheckpoints
from hub_server import Revision, StandInHub, _Repo

from pythia_tl.cli import main
from pythia_tl.errors import CheckpointError
from pythia_tl.hub.refs import repo_id_problem, revision_problem
from pythia_tl.source.layouts import load_weight_map

REPO = "EleutherAI/pythia-70m"


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


def every_file(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def any_revision(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, monkeypatch: pytest.MonkeyPatch
) -> StandInHub:
    """A stand-in Hub that answers any revision name with main's commit."""
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    original = _Repo.resolve

    def resolve(self: _Repo, revision: str) -> Revision | None:
        return original(self, revision) or original(self, "main")

    monkeypatch.setattr(_Repo, "resolve", resolve)
    return stand_in_hub


@pytest.mark.parametrize(
    "revision",
    ["../../../../x", "main/../../x", "..", ".hidden", "a b", "refs/heads/x.lock", "-x", "x\n"],
)
def test_a_revision_that_could_climb_out_of_the_cache_is_a_usage_error(
    revision: str,
    any_revision: StandInHub,
    hf_env: HfEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    before = every_file(tmp_path)
    any_revision.clear_requests()
    code, _, err = run_main(
        ["convert", REPO, "--revision", revision, "-o", "o.safetensors"], capsys
    )
    assert code == 2, err
    assert err.count("\n") == 1 and "--revision" in err and "Traceback" not in err
    assert any_revision.requests == []  # refused before huggingface_hub was asked
    assert every_file(tmp_path) == before  # no refs file, no output, anywhere


def test_the_stand_in_answers_any_revision_so_a_valid_odd_name_converts(
    any_revision: StandInHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fixture's Hub would have answered the names refused above too.
    out = tmp_path / "o.safetensors"
    code, _, err = run_main(["convert", REPO, "--revision", "feature/x-1", "-o", str(out)], capsys)
    assert code == 0, err
    assert out.is_file()


@pytest.mark.parametrize("model", ["Org/name/..", "EleutherAI/..", "a/b/c", "Org/-x", "Org/a--b"])
def test_a_model_name_that_is_not_org_slash_name_is_a_usage_error(
    model: str, hf_env: HfEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for command in (
        ["convert", model, "-o", str(tmp_path / "o.safetensors")],
        ["checkpoints", model],
    ):
        code, _, err = run_main(command, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and "unexpected" not in err and repr(model) in err


def test_a_commit_the_hub_answers_that_is_not_40_hex_is_never_written(
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"], commit="../../evil")
    out = tmp_path / "o.safetensors"
    code, _, err = run_main(["convert", REPO, "-o", str(out)], capsys)
    assert code == 1
    assert "commit '../../evil', expected 40 hexadecimal digits" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "evil").exists()


def test_a_branch_the_hub_lists_that_git_would_refuse_is_named(
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stand_in_hub.add_revision(REPO, "step1000", tiny_checkpoints["safetensors"])
    stand_in_hub.add_revision(REPO, "../../../x", tiny_checkpoints["safetensors"])
    code, _, err = run_main(["checkpoints", REPO], capsys)
    assert code == 1
    assert "the Hub listed branch '../../../x'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "name", ["main", "step143000", "240b_tokens", "refs/pr/1", "v1.0", "a" * 40, "0" * 40]
)
def test_names_git_accepts_are_revisions(name: str) -> None:
    assert revision_problem(name) is None


@pytest.mark.parametrize("name", ["", "a" * 256, "a..b", "a/", "/a", "a//b", "@", "a@{1}", "é"])
def test_names_git_refuses_are_not(name: str) -> None:
    assert revision_problem(name) is not None


@pytest.mark.parametrize(
    "repo_id", ["EleutherAI/pythia-70m", "togethercomputer/RedPajama-INCITE-Tiny"]
)
def test_hub_repository_ids_are_accepted(repo_id: str) -> None:
    assert repo_id_problem(repo_id) is None


@pytest.mark.parametrize("shard", ["..", ".", "../model.safetensors", "a/b", "x\x00y", ""])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(shard: str, tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"embed.weight": shard}}))
    with pytest.raises(CheckpointError, match=r"weight_map\['embed.weight'\] is .*expected a file"):
        load_weight_map(index)
