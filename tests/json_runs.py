"""Every command's ``--json`` output, from runs against the stand-in Hub and a local folder: what
the schema test (``test_json_schema``) holds to ``docs/json.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch_suite import Suite

Run = Callable[[list[str]], tuple[int, str, str]]


def json_outputs(cli: Run, suite: Suite, tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Each command's JSON objects (keyed by the name its section in docs/json.md has)."""
    folder = suite.folders[("EleutherAI/pythia-70m", 1000)]
    out = tmp_path / "json-runs"
    converted = out / "converted.safetensors"
    runs: dict[str, list[list[str]]] = {
        "convert": [["convert", str(folder), "-o", str(converted)]],
        "plan": [["plan", "pythia-70m", "--step", "1000"], ["plan", str(folder), "--fold-ln"]],
        "inspect": [["inspect", str(converted)]],
        "verify": [["verify", str(converted)], ["verify", str(converted), "--no-source"]],
        "checkpoints": [["checkpoints", "pythia-70m"]],
        "batch --dry-run": [
            ["batch", "pythia-70m", "--steps", "0-2", "-o", str(out / "batch"), "--dry-run"]
        ],
        "batch": [["batch", "pythia-70m", "--steps", "0-2", "-o", str(out / "batch")]],
        "export": [["export", str(converted), "-o", str(out / "hf")]],
        "trace": [
            [
                "trace",
                "pythia-70m",
                "--tensors",
                "embed.W_E",
                "--steps",
                "0,1000",
                "-o",
                str(out / "trace.safetensors"),
            ]
        ],
        "audit": [["audit", "pythia-70m", "--steps", "0-2"]],
        "error": [["convert", str(folder), "-o", str(converted)]],  # exists: refused
    }
    found: dict[str, list[dict[str, Any]]] = {}
    for name, commands in runs.items():
        for args in commands:
            code, stdout, stderr = cli([*args, "--json"])
            # audit exits 1 when it finds anomalies (the suite has a duplicate step).
            assert code == 0 or name in ("error", "audit"), (args, stderr)
            found.setdefault(name, []).append(json.loads(stdout))
    return found
