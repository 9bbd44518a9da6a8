"""The README and docs/: short, every page linked, every link and anchor resolving, the commands
they show kept in step with CI, and the README's research loop run against the stand-in Hub."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from hub_server import StandInHub
from synthetic import PythiaShape, write_checkpoint
from tiny_tokenizer import write_tokenizer

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
README_MAX_LINES = 150
# [text](target): the target up to the first space or closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and inline code."""
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def fenced_block(text: str, marker: str) -> str:
    """The code block right after ``<!-- marker -->``."""
    after = text.split(f"<!-- {marker} -->\n```", 1)[1]
    return after.split("\n", 1)[1].split("```", 1)[0]


def test_the_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_the_readme_links_every_docs_page_and_each_exists() -> None:
    linked = {
        (README.parent / target.split("#", 1)[0]).resolve()
        for target in links(README)
        if target.startswith("docs/")
    }
    pages = {page.resolve() for page in DOCS.glob("*.md")}
    assert pages, "no docs/ pages"
    assert sorted(p.name for p in linked - pages) == []  # linked but missing
    assert sorted(p.name for p in pages - linked) == []  # written but not linked


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    command = 'pip install -e ".[test]" && python -m pytest -q'
    assert f"```bash\n{command}\n```" in README.read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert any(line.split(" ||", 1)[0] == command for line in ci.splitlines())


def test_the_readme_research_loop_runs_against_the_stand_in_hub(
    stand_in_hub: StandInHub, tmp_path: Path
) -> None:
    shape = PythiaShape(n_layers=1, d_model=32, n_heads=2, d_vocab=64, n_ctx=32)
    steps = (0, 1000, 143000)
    for step in steps:
        folder = tmp_path / "hub" / f"step{step}"
        write_checkpoint(folder, shape, layout="safetensors", seed=step)
        write_tokenizer(folder, shape.d_vocab)
        stand_in_hub.add_revision("EleutherAI/pythia-70m", f"step{step}", folder)
    stand_in_hub.add_revision("EleutherAI/pythia-70m", "main", tmp_path / "hub" / "step143000")

    text = README.read_text()
    batch = shlex.split(fenced_block(text, "research-loop-batch").strip())
    assert batch[0] == "pythia-tl"
    env = dict(os.environ)  # the stand-in Hub's endpoint and a private cache (hf_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    work = tmp_path / "work"
    work.mkdir()
    run = {"cwd": work, "env": env, "capture_output": True, "text": True, "timeout": 300}
    done = subprocess.run([sys.executable, "-m", "pythia_tl", *batch[1:]], **run)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr

    env["HF_HUB_OFFLINE"] = "1"  # the loop loads from the files and the cached tokenizer alone
    loop = fenced_block(text, "research-loop-load")
    done = subprocess.run([sys.executable, "-c", loop], **run)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr
    assert "no tokenizer" not in done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["0", "1000", "143000"]
    kls = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert kls[2] == 0.0 and kls[0] > 0 and kls[1] > 0
