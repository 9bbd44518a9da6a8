"""Every command's ``--json`` keys, held to docs/json.md (the one place they are documented)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from batch_suite import publish_suite
from hub_server import StandInHub
from json_runs import Run, json_outputs

from pythia_tl.dtypes import OUTPUT_DTYPE_NAMES
from pythia_tl.json_schema import SCHEMA_VERSION

DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"
_SECTION = re.compile(r"^## (.+)$")
_ROW = re.compile(r"^\| `([^`]+)` \|")


def documented() -> dict[str, set[str]]:
    """The key paths of each section of docs/json.md (after its vocabulary section)."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if heading := _SECTION.match(line):
            current = sections.setdefault(heading[1], set())
        elif (row := _ROW.match(line)) and current is not None:
            current.add(row[1])
    sections.pop("One vocabulary", None)
    return sections


def key_paths(value: Any, documented_paths: set[str], prefix: str = "") -> set[str]:
    """The key paths of ``value``, spelled as docs/json.md spells them; a documented map
    (``a{}``) is entered only when the page lists its values' keys."""
    found: set[str] = set()
    if isinstance(value, dict):
        as_map = f"{prefix}{{}}"
        if as_map in documented_paths:
            if any(path.startswith(as_map + ".") for path in documented_paths):
                for item in value.values():
                    found |= key_paths(item, documented_paths, as_map)
            return found
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            if f"{path}{{}}" not in documented_paths:
                found.add(path)
            found |= key_paths(item, documented_paths, path)
    elif isinstance(value, list):
        for item in value:
            found |= key_paths(item, documented_paths, f"{prefix}[]")
    return found


@pytest.fixture
def outputs(stand_in_hub: StandInHub, tmp_path: Path, cli: Run) -> dict[str, list[dict[str, Any]]]:
    return json_outputs(cli, publish_suite(stand_in_hub, tmp_path / "hub-src"), tmp_path)


def test_every_command_prints_the_keys_docs_json_documents(
    outputs: dict[str, list[dict[str, Any]]],
) -> None:
    sections = documented()
    assert set(outputs) == set(sections)  # every section is run, every run documented
    for name, objects in outputs.items():
        paths = sections[name]
        top_level = {path.removesuffix("{}") for path in paths if re.fullmatch(r"\w+(\{\})?", path)}
        for value in objects:
            assert next(iter(value)) == "schema" and value["schema"] == SCHEMA_VERSION, name
            undocumented = key_paths(value, paths) - paths
            assert not undocumented, f"{name}: keys not in docs/json.md: {sorted(undocumented)}"
            assert set(value) == top_level, f"{name}: {sorted(set(value) ^ top_level)}"


def test_one_spelling_across_commands(outputs: dict[str, list[dict[str, Any]]]) -> None:
    plan, inspect = outputs["plan"][0], outputs["inspect"][0]
    assert {t["dtype"] for t in plan["tensors"]} <= set(OUTPUT_DTYPE_NAMES)
    assert {t["dtype"] for t in inspect["tensors"].values()} <= set(OUTPUT_DTYPE_NAMES)
    # The same order of keys: embed.W_E first in both.
    assert next(iter(inspect["tensors"])) == plan["tensors"][0]["key"] == "embed.W_E"
    # "model" is the repository id wherever it appears.
    assert outputs["checkpoints"][0]["model"] == "EleutherAI/pythia-70m"
    assert outputs["trace"][0]["model"] == "EleutherAI/pythia-70m"
    for name in ("batch", "batch --dry-run", "audit"):
        assert {r["model"] for r in outputs[name][0]["revisions"]} == {"EleutherAI/pythia-70m"}
    assert {r["status"] for r in outputs["batch --dry-run"][0]["revisions"]} <= {
        "converted",
        "skipped",
        "duplicate",
        "missing",
        "refused",
    }
    # plan names what it planned, as convert names what it converted.
    hub_plan = outputs["plan"][0]
    assert hub_plan["source"] == "EleutherAI/pythia-70m" and hub_plan["revision"] == "step1000"
    assert re.fullmatch(r"[0-9a-f]{40}", hub_plan["commit"])


def test_the_documented_schema_version_is_the_programs() -> None:
    assert f"now **{SCHEMA_VERSION}**" in DOC.read_text(encoding="utf-8")
