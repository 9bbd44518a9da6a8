"""Text output that fits: on an 80-column terminal every table fits the width (or is stacked)
and no value people copy (sha256, commit, tensor key, path) is cut; piped, lines stay whole."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from batch_suite import publish_suite
from hub_server import StandInHub
from json_runs import Run, json_outputs

WIDTH = 80
_BOX = re.compile(r"[│┃┏┡└╭━─]")
_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # bold headers: escapes that take no column


def text_runs(folder: Path, converted: Path, out: Path) -> dict[str, list[str]]:
    """The commands whose text output is a table or a listing (read-only, run after the JSON)."""
    return {
        "plan": ["plan", "pythia-70m", "--step", "1000"],
        "plan --fold-ln": ["plan", str(folder), "--fold-ln"],
        "inspect": ["inspect", str(converted)],
        "verify": ["verify", str(converted)],
        "checkpoints": ["checkpoints", "pythia-70m"],
        "batch --dry-run": ["batch", "pythia-70m", "--steps", "0-2", "-o", str(out), "--dry-run"],
        "audit": ["audit", "pythia-70m", "--steps", "0-2"],
    }


def copied_values(name: str, value: dict[str, Any]) -> set[str]:
    """What a user copies out of the command's output: its keys, hashes, commits and paths."""
    found: set[str] = set()
    if name.startswith("plan"):
        found |= {t["key"] for t in value["tensors"]}
        found |= {t["source"] for t in value["tensors"] if t["source"]}
        found.add(value["source"])
    elif name == "inspect":
        found |= set(value["tensors"]) | {value["file"]}
        found |= set(value["metadata"]["source_files"].values())  # sha256
        found.add(value["metadata"]["source"])
    elif name == "verify":
        found.add(value["file"])
    elif name in ("checkpoints", "batch --dry-run", "audit"):
        rows = value["checkpoints" if name == "checkpoints" else "revisions"]
        found |= {r["commit"] for r in rows if r["commit"] and name != "audit"}
        found |= {r["revision"] for r in rows}
    return found


@pytest.fixture
def rendered(
    stand_in_hub: StandInHub, tmp_path: Path, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[dict[str, Any], str, str]]:
    """Each command's JSON, and its text on an 80-column terminal and through a pipe."""
    suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    json_outputs(cli, suite, tmp_path)  # writes the converted file the others read
    folder = suite.folders[("EleutherAI/pythia-70m", 1000)]
    converted = tmp_path / "json-runs" / "converted.safetensors"
    found = {}
    for name, args in text_runs(folder, converted, tmp_path / "dry").items():
        code, stdout, stderr = cli([*args, "--json"])
        value = json.loads(stdout)
        monkeypatch.setenv("COLUMNS", str(WIDTH))
        monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal, though captured
        monkeypatch.setenv("NO_COLOR", "1")
        code, terminal, stderr = cli(args)
        terminal = _STYLE.sub("", terminal)
        assert code in (0, 1), stderr  # audit: 1 when it finds anomalies (the suite has one)
        monkeypatch.delenv("TTY_COMPATIBLE")
        code, piped, stderr = cli(args)
        monkeypatch.setenv("COLUMNS", "250")
        found[name] = (value, terminal, piped)
    return found


def test_tables_fit_80_columns_and_no_copied_value_is_cut(
    rendered: dict[str, tuple[dict[str, Any], str, str]],
) -> None:
    for name, (value, terminal, piped) in rendered.items():
        lines = terminal.splitlines()
        for line in lines:
            # A table's line fits; a stacked value longer than the width is whole on its line.
            assert not (_BOX.search(line) and len(line) > WIDTH), f"{name}: too wide: {line!r}"
        assert "…" not in terminal, name
        for copied in copied_values(name, value):
            assert any(copied in line for line in lines), f"{name}: {copied!r} cut on a terminal"
            assert any(copied in line for line in piped.splitlines()), f"{name}: {copied!r} piped"
        assert not _BOX.search(piped) and "…" not in piped, f"{name}: piped output not plain"


def test_a_wide_plan_is_stacked_on_a_terminal(
    rendered: dict[str, tuple[dict[str, Any], str, str]],
) -> None:
    value, terminal, piped = rendered["plan"]
    lines = terminal.splitlines()
    first = value["tensors"][0]
    # The row's first cell starts its first line; the other cells follow, named.
    at = next(i for i, line in enumerate(lines) if line.startswith(first["key"] + " "))
    assert f"source key: {first['source']}" in "\n".join(lines[at : at + 4])
    # Piped: one row to a line, every cell on it.
    row = next(line for line in piped.splitlines() if line.startswith(first["key"] + " "))
    assert first["source"] in row and first["dtype"] in row
