"""The batch's parts on their own: judging existing outputs, linking duplicates, cleaning the
cache."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from batch_suite import SHARD_BYTES, SUITE_SHAPE
from conftest import HfEnv, TinyCheckpoints
from hub_server import StandInHub
from safetensors.torch import save_file
from synthetic import write_checkpoint

from pythia_tl.batch.dedupe import link_output, weights_key
from pythia_tl.batch.janitor import DownloadJanitor
from pythia_tl.batch.resume import Requirements, judge_existing
from pythia_tl.engine import ConvertOptions, convert
from pythia_tl.processing import Processing
from pythia_tl.source import resolve_source
from pythia_tl.source.hub import describe_revision, download_revision

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


def test_a_duplicate_is_published_as_a_hard_link_replacing_what_was_there(
    converted: Path, tmp_path: Path
) -> None:
    target = tmp_path / "step143000.safetensors"
    target.write_bytes(b"an older output")
    assert link_output(converted, target) == "hard link"
    assert target.stat().st_ino == converted.stat().st_ino
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_weights_keys_belong_to_one_repository() -> None:
    shas = {"model.safetensors": "a" * 64}
    assert weights_key(REPO, shas) == weights_key(REPO, {"other-name.safetensors": "a" * 64})
    assert weights_key(REPO, shas) != weights_key("EleutherAI/pythia-160m", shas)
    assert weights_key(REPO, {}) is None


def two_revisions_sharing_a_shard(root: Path) -> tuple[Path, Path]:
    """Sharded checkpoints whose first shard is byte-identical and whose others differ."""
    first, second, other = root / "a", root / "b", root / "other"
    for folder, seed in ((first, 1), (other, 2)):
        write_checkpoint(
            folder, SUITE_SHAPE, layout="safetensors-sharded", seed=seed, shard_bytes=SHARD_BYTES
        )
    shutil.copytree(first, second)
    shards = sorted(p.name for p in first.glob("model-*.safetensors"))
    assert len(shards) > 2
    for name in shards[1:]:
        shutil.copy(other / name, second / name)
    return first, second


def weight_blobs(hf_env: HfEnv) -> set[str]:
    """The cache's LFS blobs (named by their sha256; small files are named by a git sha1)."""
    return {p.name for p in hf_env.cache.glob("models--*/blobs/*") if len(p.name) == 64}


def test_the_janitor_removes_only_this_runs_downloads_once_no_revision_needs_them(
    stand_in_hub: StandInHub, hf_env: HfEnv, tmp_path: Path
) -> None:
    first, second = two_revisions_sharing_a_shard(tmp_path)
    earlier = tmp_path / "earlier"
    write_checkpoint(earlier, SUITE_SHAPE, layout="safetensors", seed=3)
    stand_in_hub.add_revision(REPO, "step1", first)
    stand_in_hub.add_revision(REPO, "step2", second)
    stand_in_hub.add_revision(REPO, "step3", earlier)
    a, b = describe_revision(REPO, "step1"), describe_revision(REPO, "step2")
    shared = set(a.weight_sha256.values()) & set(b.weight_sha256.values())
    assert len(shared) == 1
    # The cache held step3 before the run; the run converts it too, and must leave it there.
    download_revision(describe_revision(REPO, "step3"))
    before = weight_blobs(hf_env)
    assert len(before) == 1

    janitor = DownloadJanitor(remove=True)
    c = describe_revision(REPO, "step3")
    janitor.start(c.weight_sha256.values())
    assert janitor.finish(c.weight_sha256.values(), download_revision(c)) == 0
    assert weight_blobs(hf_env) == before

    janitor.start(a.weight_sha256.values())
    janitor.start(b.weight_sha256.values())
    fetched_a = download_revision(a)
    assert janitor.finish(a.weight_sha256.values(), fetched_a) > 0
    # step1's own shards are gone; the shared one stays, since step2 still needs it.
    assert weight_blobs(hf_env) == before | shared
    assert not [p for p in fetched_a.folder.iterdir() if p.name.startswith("model-")]
    assert (fetched_a.folder / "config.json").is_file()

    fetched_b = download_revision(b)
    assert all(p.exists() for p in fetched_b.folder.iterdir())
    janitor.finish(b.weight_sha256.values(), fetched_b)
    assert weight_blobs(hf_env) == before


def test_keep_downloads_keeps_them(stand_in_hub: StandInHub, hf_env: HfEnv, tmp_path: Path) -> None:
    first, _ = two_revisions_sharing_a_shard(tmp_path)
    stand_in_hub.add_revision(REPO, "step1", first)
    listing = describe_revision(REPO, "step1")
    janitor = DownloadJanitor(remove=False)
    janitor.start(listing.weight_sha256.values())
    fetched = download_revision(listing)
    before = weight_blobs(hf_env)
    assert janitor.finish(listing.weight_sha256.values(), fetched) == 0
    assert weight_blobs(hf_env) == before and before
