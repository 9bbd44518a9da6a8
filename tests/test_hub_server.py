"""The stand-in Hub answers huggingface_hub's real calls as the Hub does.

Most tests call huggingface_hub in this process: the ``stand_in_hub`` fixture patches
``huggingface_hub.constants`` (read when a call runs) as well as the environment, since the
library reads the environment only at import. ``test_subprocess_*`` check the other route, the one
the CLI takes: a fresh interpreter that reads the patched environment at import.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from hub_server import StandInHub, resolve_url
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

if TYPE_CHECKING:
    from conftest import CliResult, HfEnv, TinyCheckpoints

REPO = "EleutherAI/pythia-tiny"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def hub(stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints) -> StandInHub:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors-sharded"])
    stand_in_hub.add_revision(REPO, "step0", tiny_checkpoints["bin"])
    return stand_in_hub


def test_model_info_reports_commit_sizes_and_lfs_sha256(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    folder = tiny_checkpoints["safetensors-sharded"]
    info = HfApi().model_info(REPO, revision="main", files_metadata=True)
    assert info.sha == hub.commit_of(REPO, "main")
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {p.name for p in folder.iterdir()}
    for name, sibling in siblings.items():
        assert sibling.size == (folder / name).stat().st_size
        if name.endswith(".safetensors"):
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == sha256_of(folder / name)
            assert sibling.lfs.size == sibling.size
        else:
            assert sibling.lfs is None
            assert sibling.blob_id is not None


def test_model_info_without_metadata_names_files_only(hub: StandInHub) -> None:
    info = HfApi().model_info(REPO, revision="step0")
    assert {s.rfilename for s in info.siblings or []} == {"config.json", "pytorch_model.bin"}
    assert all(s.size is None and s.lfs is None for s in info.siblings or [])
    assert HfApi().model_info(REPO).sha == hub.commit_of(REPO, "main")


def test_list_repo_refs_gives_distinct_commits_for_identical_content(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    hub.add_revision(REPO, "step1", tiny_checkpoints["safetensors-sharded"])
    refs = HfApi().list_repo_refs(REPO)
    branches = {b.name: b.target_commit for b in refs.branches}
    assert set(branches) == {"main", "step0", "step1"}
    assert all(b.ref == f"refs/heads/{b.name}" for b in refs.branches)
    assert len(set(branches.values())) == 3
    assert branches["step1"] == hub.commit_of(REPO, "step1")
    assert refs.tags == [] and refs.converts == []


def test_list_repo_tree_recursive_and_by_folder(stand_in_hub: StandInHub, tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "deeper" / "notes.txt").write_text("hi")
    commit = stand_in_hub.add_revision(REPO, "main", tmp_path)
    api = HfApi()

    everything = list(api.list_repo_tree(REPO, revision=commit, recursive=True))
    files = {e.path: e for e in everything if hasattr(e, "size")}
    assert set(files) == {"config.json", "sub/model.safetensors", "sub/deeper/notes.txt"}
    assert files["sub/model.safetensors"].lfs is not None
    assert files["sub/model.safetensors"].lfs.sha256 == hashlib.sha256(b"x" * 100).hexdigest()
    assert files["config.json"].lfs is None
    # The git blob id of a small file is what git computes.
    assert files["config.json"].blob_id == hashlib.sha1(b"blob 2\0{}").hexdigest()

    top = {e.path for e in api.list_repo_tree(REPO, revision="main")}
    assert top == {"config.json", "sub"}
    inside = {e.path for e in api.list_repo_tree(REPO, "sub", revision="main")}
    assert inside == {"sub/model.safetensors", "sub/deeper"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "nowhere", revision="main"))


def test_download_by_branch_then_by_commit(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    folder = tiny_checkpoints["bin"]
    config = Path(hf_hub_download(REPO, "config.json", revision="step0"))
    weights = Path(hf_hub_download(REPO, "pytorch_model.bin", revision="step0"))
    assert config.read_bytes() == (folder / "config.json").read_bytes()
    assert weights.read_bytes() == (folder / "pytorch_model.bin").read_bytes()
    # The cache names an LFS blob by its sha256 (the X-Linked-Etag).
    assert weights.resolve().name == sha256_of(folder / "pytorch_model.bin")
    # The redirect's Xet headers make huggingface_hub resolve again rather than reuse the HEAD's
    # Location (as on the real Hub).
    assert hub.requests == [
        ("HEAD", f"/{REPO}/resolve/step0/config.json"),
        ("GET", f"/{REPO}/resolve/step0/config.json"),
        ("HEAD", f"/{REPO}/resolve/step0/pytorch_model.bin"),
        ("GET", f"/{REPO}/resolve/step0/pytorch_model.bin"),
        ("GET", f"/lfs/{sha256_of(folder / 'pytorch_model.bin')}"),
    ]
    assert [r.server for r in hub.records] == ["hub", "hub", "hub", "hub", "cdn"]
    assert hub.downloaded_paths() == {"config.json", "pytorch_model.bin"}

    hub.clear_requests()
    commit = hub.commit_of(REPO, "step0")
    again = hf_hub_download(REPO, "pytorch_model.bin", revision=commit)
    assert Path(again) == weights
    assert hub.requests == []  # a cached file pinned to a commit needs no request


def test_offline_rerun_is_served_from_cache(hub: StandInHub, hf_env: HfEnv) -> None:
    online = hf_hub_download(REPO, "model.safetensors.index.json", revision="main")
    hub.clear_requests()
    hf_env.set_offline(True)
    assert hf_hub_download(REPO, "model.safetensors.index.json", revision="main") == online
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json", revision="main")
    assert hub.requests == []


def test_snapshot_download_fetches_only_allowed_files(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    folder = tiny_checkpoints["safetensors-sharded"]
    shards = {p.name for p in folder.glob("model-*.safetensors")}
    assert len(shards) >= 3
    snapshot = Path(snapshot_download(REPO, revision="main", allow_patterns=["*.json"]))
    assert {p.name for p in snapshot.iterdir()} == {"config.json", "model.safetensors.index.json"}
    assert hub.downloaded_paths() == {"config.json", "model.safetensors.index.json"}
    commit = hub.commit_of(REPO, "main")
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
    assert ("GET", f"/api/models/{REPO}/tree/{commit}") in hub.requests

    snapshot_download(REPO, revision="main", allow_patterns=["*.safetensors"])
    assert hub.downloaded_paths() == {"config.json", "model.safetensors.index.json", *shards}


@pytest.mark.parametrize(
    ("repo", "revision", "filename", "error"),
    [
        ("EleutherAI/no-such-model", "main", "config.json", RepositoryNotFoundError),
        (REPO, "step999", "config.json", RevisionNotFoundError),
        (REPO, "main", "missing.json", EntryNotFoundError),
    ],
)
def test_not_found_errors(
    hub: StandInHub, repo: str, revision: str, filename: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        hf_hub_download(repo, filename, revision=revision)
    if error is not EntryNotFoundError:
        with pytest.raises(error):
            HfApi().model_info(repo, revision=revision, files_metadata=True)
    # A 404 is an answer from the Hub, not a connection problem: never a LocalEntryNotFoundError.
    with pytest.raises(HfHubHTTPError):
        hf_hub_download(repo, filename, revision=revision)


def test_unknown_repo_refs_and_tree(hub: StandInHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        HfApi().list_repo_refs("someone/else")
    with pytest.raises(RevisionNotFoundError):
        list(HfApi().list_repo_tree(REPO, revision="0" * 40))


def test_ranges_on_resolve_and_cdn(hub: StandInHub, tiny_checkpoints: TinyCheckpoints) -> None:
    config = (tiny_checkpoints["bin"] / "config.json").read_bytes()
    status, headers, body = raw_get(
        resolve_url(hub.url, REPO, "step0", "config.json"), {"Range": "bytes=5-9"}
    )
    assert (status, body) == (206, config[5:10])
    assert headers["Content-Range"] == f"bytes 5-9/{len(config)}"

    status, headers, _ = raw_get(resolve_url(hub.url, REPO, "step0", "pytorch_model.bin"))
    assert status == 302
    weights = (tiny_checkpoints["bin"] / "pytorch_model.bin").read_bytes()
    assert headers["X-Linked-Size"] == str(len(weights))
    assert headers["X-Repo-Commit"] == hub.commit_of(REPO, "step0")
    assert headers["Location"].startswith(hub.cdn_url)
    assert len(headers["X-Xet-Hash"]) == 64 and 'rel="xet-auth"' in headers["Link"]
    status, _, body = raw_get(headers["Location"], {"Range": "bytes=-7"})
    assert (status, body) == (206, weights[-7:])
    status, headers, _ = raw_get(headers["Location"], {"Range": f"bytes={len(weights)}-"})
    assert status == 416


def test_truncated_body_is_downloaded_again(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    weights = tiny_checkpoints["bin"] / "pytorch_model.bin"
    fault = hub.break_file(REPO, "pytorch_model.bin", revision="step0", offset=1000, times=1)
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step0")
    assert Path(path).read_bytes() == weights.read_bytes()
    assert fault.fired == 1
    # huggingface_hub counts bytes in 10 MiB chunks, so below that it retries from the start.
    ranges = [r.range for r in hub.records if r.server == "cdn"]
    assert ranges == [None, None]


def test_corrupt_body_is_not_detected_by_huggingface_hub(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    weights = tiny_checkpoints["bin"] / "pytorch_model.bin"
    hub.break_file(REPO, "pytorch_model.bin", kind="corrupt", offset=10)
    path = Path(hf_hub_download(REPO, "pytorch_model.bin", revision="step0"))
    # The blob is still named after the sha256 the Hub announced, whatever arrived.
    assert path.resolve().name == sha256_of(weights)
    assert sha256_of(path) != sha256_of(weights)


def test_status_fault_then_recovery(hub: StandInHub) -> None:
    hub.break_file(REPO, "config.json", kind="status", status=403, times=1)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json", revision="main")
    assert Path(hf_hub_download(REPO, "config.json", revision="main")).is_file()


def test_branches_can_move_and_disappear(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    old = hub.commit_of(REPO, "main")
    new = hub.add_revision(REPO, "main", tiny_checkpoints["bin"])
    assert new != old
    assert HfApi().model_info(REPO, revision="main").sha == new
    assert HfApi().model_info(REPO, revision=old).sha == old  # history stays reachable
    hub.remove_revision(REPO, "step0")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO, revision="step0")
    hub.remove_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(REPO)


def test_subprocess_sees_the_stand_in_hub_and_its_offline_cache(
    hub: StandInHub, tiny_checkpoints: TinyCheckpoints, hf_env: HfEnv
) -> None:
    code = (
        "import sys; from huggingface_hub import hf_hub_download; "
        f"print(hf_hub_download({REPO!r}, 'pytorch_model.bin', revision='step0'))"
    )

    def run(offline: str) -> str:
        env = dict(os.environ, HF_HUB_OFFLINE=offline)
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    online = Path(run("0"))
    assert online.is_relative_to(hf_env.cache)
    assert online.read_bytes() == (tiny_checkpoints["bin"] / "pytorch_model.bin").read_bytes()
    assert hub.downloaded_paths() == {"pytorch_model.bin"}
    hub.clear_requests()
    assert Path(run("1")) == online
    assert hub.requests == []


def test_subprocess_cli_gets_the_test_environment(
    stand_in_hub: StandInHub, run_cli: Callable[..., CliResult]
) -> None:
    returncode, stdout, stderr = run_cli(["--help"])
    assert returncode == 0, stderr
    assert "convert" in stdout
    assert stand_in_hub.requests == []


def test_hub_without_repos_closes_cleanly(tmp_path: Path) -> None:
    shutil.copy(__file__, tmp_path / "file.txt")
    with StandInHub() as hub:
        hub.add_revision("solo", "main", tmp_path)
        status, _, body = raw_get(resolve_url(hub.url, "solo", "main", "file.txt"))
        assert (status, body) == (200, Path(__file__).read_bytes())
