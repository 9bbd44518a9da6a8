"""What a new user ran into: output folders, piped tables, help and version, JSON errors, names
and steps that are almost right, local folders where Hub models are expected, start-up cost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from batch_suite import publish_suite
from conftest import REPO_ROOT, UNREACHABLE_ENDPOINT, HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub
from safetensors.torch import save_file
from synthetic import PythiaShape, write_checkpoint

from pythia_tl.output.metadata import REQUIRED_KEYS

REPO = "EleutherAI/pythia-70m"
COMMANDS = (
    "convert",
    "plan",
    "inspect",
    "verify",
    "checkpoints",
    "batch",
    "export",
    "trace",
    "audit",
)
# Enough layers for blocks.10 to exist, so that natural order can be told from text order.
ELEVEN_LAYERS = PythiaShape(n_layers=11, d_model=16, n_heads=2, d_vocab=64, n_ctx=32)

# Runs the CLI in a fresh interpreter and reports whether torch was imported.
TORCH_PROBE = """
import sys
from pythia_tl.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print("torch imported:", "torch" in sys.modules, "exit:", code)
"""


@pytest.fixture(scope="module")
def eleven_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eleven") / "eleven-layers"
    write_checkpoint(folder, ELEVEN_LAYERS, layout="safetensors", seed=3)
    return folder


def converted(cli: Run, source: Path, out: Path) -> Path:
    status, _, err = cli(["convert", str(source), "-o", str(out), "--quiet"])
    assert status == 0, err
    return out


def imports_torch(args: list[str], exit_code: int = 0) -> bool:
    """Whether the CLI, run with ``args`` in a fresh interpreter, imported torch (exiting with
    ``exit_code``)."""
    result = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, *args],
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.rstrip().endswith(f"exit: {exit_code}"), (args, result)
    return "torch imported: True" in result.stdout


def test_commands_that_convert_nothing_do_not_import_torch(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run, hf_env: HfEnv
) -> None:
    out = converted(cli, tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    for args in (
        ["--help"],
        ["--version"],
        *([command, "--help"] for command in COMMANDS),
        ["checkpoints", "pythia-70m"],
        ["inspect", str(out)],
        ["inspect", str(out), "--json"],
        ["inspect", str(out), "--config"],
        ["plan", str(tiny_checkpoints["safetensors"])],
        ["plan", str(tiny_checkpoints["safetensors-sharded"]), "--process", "--json"],
        ["plan", str(tiny_checkpoints["v5-lm_head"]), "--layers", "0", "--dtype", "float32"],
    ):
        assert not imports_torch(args), args
    # Refusing an existing output is instant: nothing converts, so nothing imports torch.
    assert not imports_torch(["convert", str(tiny_checkpoints["bin"]), "-o", str(out)], 1)
    assert not imports_torch(["convert", str(tiny_checkpoints["bin"]), "-o", f"{out}/x"], 1)
    trace = ["trace", "pythia-70m", "--tensors", "embed.W_E", "--steps", "0", "-o", str(out)]
    assert not imports_torch(trace, 1)
    # A .bin's headers are its pickle, which only torch's unpickler reads.
    assert imports_torch(["plan", str(tiny_checkpoints["bin"])])


def test_plan_of_a_hub_revision_does_not_import_torch(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors-sharded"])
    assert not imports_torch(["plan", REPO, "--revision", "main", "--json"])


def test_bare_command_prints_the_help_and_exits_0(run_cli) -> None:
    result = run_cli([])
    assert result.returncode == 0
    assert "Usage: pythia-tl" in result.stdout and "export" in result.stdout
    assert result.stderr == ""


def test_version_and_flags_without_a_type(cli: Run) -> None:
    from pythia_tl import __version__

    assert cli(["--version"]) == (0, f"pythia-tl {__version__}\n", "")
    for command in ("convert", "batch", "verify", "export", "plan", "inspect"):
        status, stdout, _ = cli([command, "--help"])
        assert status == 0 and "--help" in stdout
        assert "<bool>" not in stdout, command
    status, stdout, _ = cli(["--help"])
    assert "--version" in stdout and "<bool>" not in stdout


def flat(help_text: str) -> str:
    """The help's words in order, without the boxes rich draws around them."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", help_text).split())


def test_help_shows_metavars_not_python_types(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from pythia_tl.cli import app

    monkeypatch.setenv("COLUMNS", "100")
    for command in COMMANDS:
        status, stdout, _ = cli([command, "--help"])
        assert status == 0, command
        for typed in ("<str>", "<int", "<path>", "<list", "list[", "[x>=", "{", "}"):
            assert typed not in stdout, (command, typed)
        usage = stdout.split("Usage: ", 1)[1].splitlines()[0]
        assert re.fullmatch(r"pythia-tl \w+ \[OPTIONS\]( \[?[A-Z]+(\.\.\.)?\]?)+ *", usage), usage
        # main() takes --debug anywhere on the line, and errors say "rerun with --debug".
        assert "--debug" in stdout and "Show Python tracebacks on errors." in flat(stdout)
    status, stdout, _ = cli(["--help"])
    words = flat(stdout)
    for command in app.registered_commands:
        doc = (command.callback.__doc__ or "").split("\n\n")[0]
        assert " ".join(doc.split()) in words, command.name  # whole, never cut mid-sentence


def test_help_says_defaults_and_selection_truly(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    _, stdout, _ = cli(["verify", "--help"])
    assert "(default: the commit recorded in the file)" in flat(stdout)
    assert "default: main" not in flat(stdout)
    _, stdout, _ = cli(["plan", "--help"])
    assert "Write only" not in flat(stdout) and "Only these TransformerLens keys" in flat(stdout)
    _, stdout, _ = cli(["batch", "--help"])
    assert "--jobs -j N Revisions converted at once (at least 1)." in flat(stdout)
    assert "--steps SPEC" in flat(stdout) and "FIRST-LAST[:STRIDE]" in flat(stdout)


def test_json_errors_are_a_json_object_on_stdout_and_a_line_on_stderr(cli: Run) -> None:
    status, stdout, stderr = cli(["convert", "pythia-7m", "--json"])
    assert status == 2
    report = json.loads(stdout)
    assert report["exit_code"] == 2 and "unknown model name 'pythia-7m'" in report["error"]
    assert stderr == f"error: {report['error']}\n"


def test_a_name_typo_suggests_the_closest_names_and_a_step_the_nearest_steps(cli: Run) -> None:
    _, _, stderr = cli(["convert", "pythia-70m-dedupd"])
    assert "did you mean 'pythia-70m-deduped'" in stderr
    _, _, stderr = cli(["convert", "pythia-410", "--step", "1000"])
    assert "did you mean 'pythia-410m'" in stderr
    status, _, stderr = cli(["convert", "pythia-70m", "--step", "1500"])
    assert status == 2 and "(nearest: 1000 and 2000)" in stderr
    _, _, stderr = cli(["convert", "pythia-70m-v0", "--step", "512"])
    assert "(nearest: 1000)" in stderr


def test_an_output_folder_gets_the_default_name(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = tiny_checkpoints["safetensors"]
    existing = tmp_path / "existing"
    existing.mkdir()
    assert cli(["convert", str(source), "-o", str(existing), "--quiet"])[0] == 0
    assert (existing / "safetensors.safetensors").is_file()
    assert cli(["convert", str(source), "-o", f"{tmp_path / 'new'}/", "--quiet"])[0] == 0
    assert (tmp_path / "new" / "safetensors.safetensors").is_file()
    status, _, stderr = cli(["convert", str(source), "-o", str(existing)])
    assert status == 1 and "already exists" in stderr and "--force" in stderr


def test_an_existing_output_is_refused_before_anything_is_downloaded(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    target = tmp_path / "taken.safetensors"
    target.write_bytes(b"mine")
    stand_in_hub.clear_requests()
    status, _, stderr = cli(["convert", REPO, "-o", str(target)])
    assert status == 1 and "already exists" in stderr
    assert stand_in_hub.requests == []
    assert target.read_bytes() == b"mine"


def test_plan_and_inspect_into_a_pipe_keep_every_character_in_natural_order(
    eleven_layers: Path, tmp_path: Path, cli: Run, run_cli
) -> None:
    out = converted(cli, eleven_layers, tmp_path / "out.safetensors")
    inspected = run_cli(["inspect", str(out)], env={"COLUMNS": "60"})
    assert inspected.returncode == 0, inspected.stderr
    text = inspected.stdout
    (digest,) = json.loads(json.loads(subprocess_metadata(out))["source_files"]).values()
    assert digest in text  # the whole sha256, not cut to the width
    assert text.index("blocks.2.attn.W_Q") < text.index("blocks.10.attn.W_Q")
    keys = [line.split()[0] for line in text.splitlines()[1:11]]
    assert keys == list(REQUIRED_KEYS)  # the schema's order
    listed = json.loads(run_cli(["inspect", str(out), "--json"]).stdout)["tensors"]
    assert list(listed).index("blocks.2.attn.W_Q") < list(listed).index("blocks.10.attn.W_Q")
    planned = run_cli(["plan", str(eleven_layers)], env={"COLUMNS": "60"})
    assert planned.returncode == 0, planned.stderr
    assert "gpt_neox.layers.10.attention.query_key_value.weight" in planned.stdout
    assert "(n_heads part d_head) d_model -> part n_heads d_model d_head" in planned.stdout


def subprocess_metadata(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return json.dumps(handle.metadata())


def test_inspect_says_plainly_when_pythia_tl_did_not_write_the_file(
    tmp_path: Path, cli: Run
) -> None:
    import torch

    foreign = tmp_path / "foreign.safetensors"
    save_file({"wte.weight": torch.zeros(4, 2)}, foreign)
    status, stdout, stderr = cli(["inspect", str(foreign)])
    assert status == 0
    assert stderr.startswith(f"{foreign}: not written by pythia-tl")
    assert "wte.weight" in stdout
    status, stdout, _ = cli(["inspect", str(foreign), "--json"])
    assert json.loads(stdout)["written_by_pythia_tl"] is False


@pytest.mark.parametrize("command", ["checkpoints", "batch"])
def test_batch_and_checkpoints_refuse_a_local_folder_with_what_they_take(
    command: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    folder = str(tiny_checkpoints["safetensors"])
    extra = ["--steps", "0", "-o", str(tmp_path / "out")] if command == "batch" else []
    status, stdout, stderr = cli([command, folder, *extra])
    assert (status, stdout) == (2, "")
    assert stderr.count("\n") == 1
    assert f"{folder} is a local folder: '{command}' takes Hub models" in stderr


def test_verify_after_a_batch_removed_the_downloads_says_the_source_is_not_cached(
    stand_in_hub: StandInHub, tmp_path: Path, run_cli
) -> None:
    publish_suite(stand_in_hub, tmp_path / "hub-src")
    out = tmp_path / "out"
    result = run_cli(["batch", "pythia-70m", "--steps", "1000", "-o", str(out)])
    assert result.returncode == 0, result.stderr
    assert "batch: 1 revision: 1 converted" in result.stderr
    file = out / "pythia-70m" / "step1000.safetensors"
    offline = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": UNREACHABLE_ENDPOINT}
    verified = run_cli(["verify", str(file)], env=offline)
    # The source is unavailable here, not wrong: a skip with the reason, not a failure.
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (line,) = [
        line for line in verified.stdout.splitlines() if line.split()[:2] == ["skipped", "source"]
    ]
    assert "not in the local cache" in line and "streamed conversions do not store" in line
    assert "no weights" not in verified.stdout + verified.stderr
    online = run_cli(["verify", str(file)])
    assert online.returncode == 0, online.stdout + online.stderr


def test_plan_and_verify_take_a_checkpoint_index(
    stand_in_hub: StandInHub, tmp_path: Path, cli: Run
) -> None:
    suite = publish_suite(stand_in_hub, tmp_path / "hub-src")
    status, stdout, stderr = cli(["plan", "pythia-70m", "--checkpoint-index", "11", "--json"])
    assert status == 0, stderr
    assert json.loads(stdout)["tensors"][0]["key"] == "embed.W_E"
    out = tmp_path / "out.safetensors"
    assert cli(["convert", "pythia-70m", "--step", "1000", "-o", str(out), "--quiet"])[0] == 0
    status, stdout, stderr = cli(["verify", str(out), "pythia-70m", "--checkpoint-index", "11"])
    assert status == 0, stdout + stderr
    # Index 0 is step 0, other weights: the index is what chose the revision compared with.
    status, stdout, stderr = cli(["verify", str(out), "pythia-70m", "--checkpoint-index", "0"])
    assert status == 1 and "source" in stderr
    assert suite.commit(REPO, 0) != suite.commit(REPO, 1000)
