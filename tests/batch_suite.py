"""A small checkpoint suite on the stand-in Hub, for the batch and checkpoints tests.

Two models, each with branches step0, step1, step2, step1000, step143000 and main (= step143000),
in all four file layouts. In pythia-70m, step2 holds byte-identical weights to step143000 (the
Hub really has such duplicate branches); everything else differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hub_server import StandInHub
from safetensors import safe_open
from synthetic import Layout, PythiaShape, write_checkpoint

SUITE_SHAPE = PythiaShape(n_layers=1, d_model=32, n_heads=2, d_vocab=96, n_ctx=32)
SHARD_BYTES = 8 * 1024
STEPS = (0, 1, 2, 1000, 143000)
STEPS_SPEC = ",".join(map(str, STEPS))
REPOS = ("EleutherAI/pythia-160m", "EleutherAI/pythia-70m")
LAYOUTS: dict[int, Layout] = {
    0: "bin",
    1: "safetensors",
    2: "safetensors-sharded",
    1000: "bin-sharded",
    143000: "safetensors-sharded",
}
DUPLICATE = ("EleutherAI/pythia-70m", 2, 143000)  # repo, step, the step it duplicates
N_TENSORS = 16 * SUITE_SHAPE.n_layers + 5


@dataclass(frozen=True)
class Suite:
    hub: StandInHub
    # (repo id, step) -> the folder its branch serves.
    folders: dict[tuple[str, int], Path]

    def commit(self, repo_id: str, step: int) -> str:
        return self.hub.commit_of(repo_id, f"step{step}")

    def items(self) -> list[tuple[str, int]]:
        """Every (repo, step) of the suite, in the batch's work-list order."""
        return sorted(self.folders)

    def weight_sha256(self, repo_id: str, step: int) -> dict[str, str]:
        folder = self.folders[(repo_id, step)]
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())
            if p.suffix in (".safetensors", ".bin")
        }


def publish_suite(hub: StandInHub, root: Path) -> Suite:
    folders: dict[tuple[str, int], Path] = {}
    for repo_number, repo_id in enumerate(REPOS):
        for step in STEPS:
            if (repo_id, step) == DUPLICATE[:2]:
                continue
            folder = root / repo_id.replace("/", "--") / f"step{step}"
            write_checkpoint(
                folder,
                SUITE_SHAPE,
                layout=LAYOUTS[step],
                seed=1000 * repo_number + step,
                shard_bytes=SHARD_BYTES,
            )
            folders[(repo_id, step)] = folder
    repo_id, step, original = DUPLICATE
    folders[(repo_id, step)] = folders[(repo_id, original)]
    for (repo_id, step), folder in folders.items():
        hub.add_revision(repo_id, f"step{step}", folder)
    for repo_id in REPOS:
        hub.add_revision(repo_id, "main", folders[(repo_id, 143000)])
    return Suite(hub, folders)


def output_path(root: Path, repo_id: str, step: int) -> Path:
    return root / repo_id.split("/")[1] / f"step{step}.safetensors"


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
