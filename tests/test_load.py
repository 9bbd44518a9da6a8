"""``pythia_tl.load``: a converted file as a ready HookedTransformer with its tokenizer, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, UNREACHABLE_ENDPOINT, Run, TinyCheckpoints
from hub_server import StandInHub
from partial_files import rewrite
from safetensors import safe_open
from tiny_tokenizer import SAMPLE_TEXT, write_tokenizer

import pythia_tl
from pythia_tl.errors import DependencyError, OutputFileError, UsageError
from pythia_tl.loading import NoTokenizerWarning
from pythia_tl.output.metadata import read_output
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES

REPO = "EleutherAI/pythia-70m"
STEP1000_INDEX = 11  # 0, 1, 2, 4, ..., 512 (11 checkpoints), then 1000

# Runs in a fresh process (offline settings are read when huggingface_hub is imported): load the
# file, tokenize, and compare log-probabilities with transformers' model of the source folder.
COMPARE = """
import json, sys, torch
import pythia_tl
from transformers import GPTNeoXForCausalLM
path, source, text = sys.argv[1:4]
model = pythia_tl.load(path)
tokens = model.to_tokens(text)
reference = GPTNeoXForCausalLM.from_pretrained(
    source, dtype=torch.float32, attn_implementation="eager"
)
with torch.no_grad():
    ours = model(tokens).float().log_softmax(-1)
    theirs = reference(tokens).logits.float().log_softmax(-1)
cfg = model.cfg
print(json.dumps({
    "difference": (ours - theirs).abs().max().item(),
    "tokens": tokens[0].tolist(),
    "checkpoint_index": cfg.checkpoint_index,
    "checkpoint_value": cfg.checkpoint_value,
    "dtype": str(cfg.dtype),
    "normalization_type": cfg.normalization_type,
}))
"""


def offline_python(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Python in a child process with the Hub unreachable and offline mode on."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT=UNREACHABLE_ENDPOINT, NO_COLOR="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")) if p
    )
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def source_with_tokenizer(tiny: TinyCheckpoints, folder: Path, layout: str = "safetensors") -> Path:
    shutil.copytree(tiny[layout], folder)
    write_tokenizer(folder, tiny.shape.d_vocab)
    return folder


def expected_tokens(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    ids: list[int] = AutoTokenizer.from_pretrained(str(folder))(SAMPLE_TEXT)["input_ids"]
    return ids


def convert(cli: Run, args: list[str]) -> None:
    status, _, err = cli(["convert", *args, "--quiet"])
    assert status == 0, err


@pytest.mark.parametrize("process", [False, True], ids=["raw", "processed"])
def test_hub_file_loads_offline_with_its_tokenizer_and_matches_transformers(
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    cli: Run,
    process: bool,
) -> None:
    source = source_with_tokenizer(tiny_checkpoints, tmp_path / "src")
    commit = stand_in_hub.add_revision(REPO, "step1000", source)
    out = tmp_path / "out.safetensors"
    convert(
        cli,
        [REPO, "--step", "1000", "--dtype", "float32", "-o", str(out)]
        + (["--process"] if process else []),
    )

    result = offline_python(["-c", COMPARE, str(out), str(source), SAMPLE_TEXT])
    assert result.returncode == 0, result.stderr
    assert "no tokenizer" not in result.stderr
    report = json.loads(result.stdout)
    assert report["tokens"] == expected_tokens(source)
    assert report["difference"] < 1e-4
    assert report["checkpoint_value"] == 1000
    assert report["checkpoint_index"] == STEP1000_INDEX
    assert report["dtype"] == "torch.float32"
    assert report["normalization_type"] == ("LNPre" if process else "LN")
    recorded = json.loads(read_output(out).metadata["tokenizer"])
    assert recorded == {"repo_id": REPO, "revision": commit, "files": list(TOKENIZER_FILES)}


def test_hub_conversion_fetches_the_tokenizer_files_and_no_other_file(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = source_with_tokenizer(tiny_checkpoints, tmp_path / "src")
    (source / "README.md").write_text("not fetched")
    stand_in_hub.add_revision(REPO, "main", source)
    stand_in_hub.clear_requests()
    convert(cli, [REPO, "-o", str(tmp_path / "out.safetensors")])
    assert stand_in_hub.downloaded_paths() == {"config.json", "model.safetensors", *TOKENIZER_FILES}


def test_folder_file_records_and_finds_the_folder_tokenizer(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = source_with_tokenizer(tiny_checkpoints, tmp_path / "src")
    (source / "special_tokens_map.json").unlink()
    out = tmp_path / "out.safetensors"
    convert(cli, [str(source), "-o", str(out)])
    recorded = json.loads(read_output(out).metadata["tokenizer"])
    assert recorded == {
        "folder": str(source.resolve()),
        "files": ["tokenizer.json", "tokenizer_config.json"],
    }
    model = pythia_tl.load(out, device="cpu")
    assert model.to_tokens(SAMPLE_TEXT)[0].tolist() == expected_tokens(source)
    assert model.cfg.checkpoint_index is None and model.cfg.checkpoint_value is None


def test_without_a_tokenizer_the_model_loads_and_one_line_says_so(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    assert "tokenizer" not in read_output(out).metadata
    with pytest.warns(NoTokenizerWarning) as caught:
        model = pythia_tl.load(out, device="cpu")
    assert model.tokenizer is None
    (message,) = [str(w.message) for w in caught if w.category is NoTokenizerWarning]
    assert "\n" not in message and "no tokenizer" in message and str(out) in message
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, tiny_checkpoints.shape.d_vocab)


def test_tokenizer_argument_takes_a_folder_or_a_tokenizer_object(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    folder = tmp_path / "tok"
    write_tokenizer(folder, tiny_checkpoints.shape.d_vocab)
    by_folder = pythia_tl.load(out, device="cpu", tokenizer=str(folder))
    given = AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
    by_object = pythia_tl.load(out, device="cpu", tokenizer=given)
    expected = expected_tokens(folder)
    assert by_folder.to_tokens(SAMPLE_TEXT)[0].tolist() == expected
    assert by_object.to_tokens(SAMPLE_TEXT)[0].tolist() == expected
    assert pythia_tl.load(out, device="cpu", tokenizer=None).tokenizer is None


def test_tokenizer_argument_takes_a_hub_name(
    stand_in_hub: StandInHub, tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    published = tmp_path / "published"
    shutil.copytree(tiny_checkpoints["safetensors"], published)
    write_tokenizer(published, tiny_checkpoints.shape.d_vocab)
    stand_in_hub.add_revision(REPO, "main", published)
    model = pythia_tl.load(out, device="cpu", tokenizer=REPO)
    assert model.to_tokens(SAMPLE_TEXT)[0].tolist() == expected_tokens(published)


def test_the_files_dtype_is_kept_unless_another_is_asked_for(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])  # float16 source
    kept = pythia_tl.load(out, device="cpu", tokenizer=None)
    assert kept.cfg.dtype == torch.float16 and kept.W_E.dtype == torch.float16
    wider = pythia_tl.load(out, device="cpu", tokenizer=None, dtype="float32")
    assert wider.W_E.dtype == torch.float32
    assert torch.equal(wider.W_E, kept.W_E.float())
    with pytest.raises(UsageError, match="dtype 'int8'"):
        pythia_tl.load(out, tokenizer=None, dtype="int8")


def test_a_processed_file_is_loaded_as_it_is_not_processed_again(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "--process", "-o", str(out)])
    model = pythia_tl.load(out, device="cpu", tokenizer=None)
    assert model.cfg.normalization_type == "LNPre"
    state = model.state_dict()
    with safe_open(out, framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            assert torch.equal(state[key], handle.get_tensor(key)), key


def test_keys_are_loaded_strictly(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    extra = rewrite(out, tmp_path / "extra.safetensors", add={"blocks.0.attn.W_X": torch.ones(2)})
    # Refused before a model is built: the file holds a tensor its tl_config does not imply.
    with pytest.raises(OutputFileError, match=r"blocks\.0\.attn\.W_X is not part of the layout"):
        pythia_tl.load(extra, tokenizer=None)
    lacking = rewrite(out, tmp_path / "lacking.safetensors", drop=("blocks.1.mlp.W_in",))
    with pytest.raises(OutputFileError, match=r"tensor blocks\.1\.mlp\.W_in is missing"):
        pythia_tl.load(lacking, tokenizer=None)


def test_a_partial_file_is_refused_unless_strict_is_false(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    kept = ("embed.W_E",)
    with safe_open(out, framework="pt") as handle:
        drop = tuple(key for key in handle.keys() if key not in kept)  # noqa: SIM118
        w_e = handle.get_tensor("embed.W_E")
    partial = rewrite(
        out, tmp_path / "partial.safetensors", drop=drop, selection={"tensors": list(kept)}
    )
    with pytest.raises(OutputFileError, match=r"partial file .*strict=False"):
        pythia_tl.load(partial, tokenizer=None)
    model = pythia_tl.load(partial, tokenizer=None, strict=False, device="cpu")
    assert torch.equal(model.W_E, w_e)


def test_transformer_lens_4_without_a_bridge_fails_with_one_line_naming_the_routes(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    tl4 = types.ModuleType("transformer_lens")  # HookedTransformer is gone
    monkeypatch.setitem(sys.modules, "transformer_lens", tl4)
    monkeypatch.setitem(sys.modules, "transformer_lens.model_bridge", None)  # nor a bridge
    monkeypatch.setattr("importlib.metadata.version", lambda name: "4.0.0")
    with pytest.raises(DependencyError) as caught:
        pythia_tl.load(out, backend="hooked")
    message = str(caught.value)
    assert "\n" not in message
    assert "4.0.0" in message and "transformer-lens<4" in message and "backend='bridge'" in message
    with pytest.raises(DependencyError, match=r"TransformerBridge cannot be imported"):
        pythia_tl.load(out)  # auto: the bridge, which this stand-in lacks too
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # not installed
    with pytest.raises(DependencyError, match=r"not installed: pip install \"pythia-tl\[tl\]\""):
        pythia_tl.load(out)


def test_the_readme_loading_example_runs_offline(tmp_path: Path, cli: Run) -> None:
    """README: make a tiny checkpoint, convert it, load it with pythia_tl.load."""
    folder = tmp_path / "tiny-pythia"
    made = offline_python([str(REPO_ROOT / "examples" / "make_tiny_checkpoint.py"), str(folder)])
    assert made.returncode == 0, made.stderr
    out = tmp_path / "tiny-pythia.safetensors"
    convert(cli, [str(folder), "-o", str(out)])
    example = REPO_ROOT / "examples" / "load_in_transformer_lens.py"
    result = offline_python([str(example), str(out), SAMPLE_TEXT])
    assert result.returncode == 0, result.stderr
    assert "next-token candidates after" in result.stdout
    assert "attention pattern of layer 0: (1, 4, 15, 15)" in result.stdout
