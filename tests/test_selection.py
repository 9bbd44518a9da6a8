"""``--tensors`` and ``--layers``: the output holds exactly the selected keys, with the values a
full conversion gives them (processed ones included), and says so in its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import Run, TinyCheckpoints
from safetensors.torch import load_file

from pythia_tl.mapping.selection import parse_selection


@pytest.mark.parametrize(
    ("flags", "keys"),
    [
        (["--tensors", "embed.W_E"], ["embed.W_E"]),
        (["--layers", "1"], [f"blocks.1.{n}" for n in ("ln1.w", "attn.W_Q", "mlp.b_out")]),
        (
            ["--tensors", "blocks.*.attn.W_Q,unembed.*", "--fold-ln"],
            ["blocks.0.attn.W_Q", "blocks.1.attn.W_Q", "unembed.W_U", "unembed.b_U"],
        ),
        (["--layers", "0", "--tensors", "*.b_O", "--process"], ["blocks.0.attn.b_O"]),
    ],
    ids=["embedding", "one layer", "W_Q folded", "b_O processed"],
)
@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded"])
def test_a_selection_holds_the_values_of_a_full_conversion(
    flags: list[str],
    keys: list[str],
    layout: str,
    tiny_checkpoints: TinyCheckpoints,
    cli: Run,
    tmp_path: Path,
) -> None:
    folder = tiny_checkpoints[layout]
    processing = [f for f in flags if f in ("--fold-ln", "--process")]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert cli(["convert", str(folder), "-o", str(full), *processing])[0] == 0
    status, _, stderr = cli(["convert", str(folder), "-o", str(part), *flags])
    assert status == 0, stderr
    expected, got = load_file(str(full)), load_file(str(part))
    for key in keys:
        assert key in got, key
    for key, tensor in got.items():
        assert torch.equal(tensor, expected[key]), key
    tensors = flags[flags.index("--tensors") + 1] if "--tensors" in flags else None
    layers = flags[flags.index("--layers") + 1] if "--layers" in flags else None
    selection = parse_selection(tensors, layers)
    assert sorted(got) == sorted(selection.keys(list(expected)))
    status, stdout, _ = cli(["inspect", str(part), "--json"])
    assert json.loads(stdout)["metadata"]["selection"] == selection.to_json()
    status, stdout, stderr = cli(["verify", str(part), "--json"])
    assert status == 0, stdout + stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tensors", "blocks.*.attn.W_X"], "--tensors: 'blocks.*.attn.W_X' matches no tensor"),
        (["--layers", "7"], "--layers: the model has no layer 7"),
        (["--layers", "1-0"], "--layers '1-0': range '1-0' ends before it starts"),
        (["--layers", "x"], "--layers 'x': 'x' is not a layer"),
        (
            ["--tensors", "embed.W_E", "--layers", "0"],
            "--tensors and --layers together keep nothing",
        ),
        (["--tensors", "blocks.0.ln1.w", "--fold-ln"], "--tensors: 'blocks.0.ln1.w' matches no"),
    ],
)
def test_a_selection_that_keeps_nothing_is_a_usage_error(
    flags: list[str], message: str, tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    status, _, stderr = cli(
        ["convert", str(tiny_checkpoints["safetensors"]), "-o", str(out), *flags]
    )
    assert status == 2
    assert stderr.strip().splitlines() == [
        f"error: {message}" + stderr.split(message, 1)[1].rstrip()
    ]
    assert not out.exists()
