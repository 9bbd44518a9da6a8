"""``load(..., backend="bridge")``: a TransformerBridge booted from a transformers model built in
memory from the file, on TransformerLens 3 (which has the bridge too) and 4 (where it is the
default). CI runs this file in a second environment with TransformerLens 4."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from conftest import Run, TinyCheckpoints
from hub_server import StandInHub
from test_load import REPO, STEP1000_INDEX, convert, expected_tokens, offline_python
from test_load import source_with_tokenizer as with_tokenizer
from tiny_tokenizer import SAMPLE_TEXT

import pythia_tl
from pythia_tl.errors import DependencyError, OutputFileError, SourceError

TL_MAJOR = int(version("transformer-lens").split(".")[0])

# In a fresh, offline process: load the file, compare its log-probabilities (and logits: the
# bridge keeps raw weights) with transformers' model of the source folder.
COMPARE = """
import json, sys, torch
import pythia_tl
from transformers import GPTNeoXForCausalLM
path, source, text, backend = sys.argv[1:5]
model = pythia_tl.load(path, backend=backend)
tokens = model.to_tokens(text)
reference = GPTNeoXForCausalLM.from_pretrained(
    source, dtype=torch.float32, attn_implementation="eager"
)
with torch.no_grad():
    ours = model(tokens).float()
    theirs = reference(tokens).logits.float()
cfg = model.cfg
print(json.dumps({
    "type": type(model).__name__,
    "logits": (ours - theirs).abs().max().item(),
    "log_probs": (ours.log_softmax(-1) - theirs.log_softmax(-1)).abs().max().item(),
    "tokens": tokens[0].tolist(),
    "checkpoint_index": cfg.checkpoint_index,
    "checkpoint_value": cfg.checkpoint_value,
    "dtype": str(next(model.parameters()).dtype),
}))
"""


def hub_file(
    hub: StandInHub, tiny: TinyCheckpoints, tmp_path: Path, cli: Run, *extra: str
) -> tuple[Path, Path]:
    source = with_tokenizer(tiny, tmp_path / "src")
    hub.add_revision(REPO, "step1000", source)
    out = tmp_path / "out.safetensors"
    convert(cli, [REPO, "--step", "1000", "-o", str(out), *extra])
    return source, out


@pytest.mark.parametrize("backend", ["bridge", "auto"])
def test_the_bridge_reproduces_transformers_offline_with_checkpoint_fields_and_tokenizer(
    stand_in_hub: StandInHub,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    cli: Run,
    backend: str,
) -> None:
    source, out = hub_file(stand_in_hub, tiny_checkpoints, tmp_path, cli, "--dtype", "float32")
    result = offline_python(["-c", COMPARE, str(out), str(source), SAMPLE_TEXT, backend])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected_type = (
        "TransformerBridge" if backend == "bridge" or TL_MAJOR >= 4 else "HookedTransformer"
    )
    assert report["type"] == expected_type
    assert report["tokens"] == expected_tokens(source)
    assert report["log_probs"] < 1e-4
    if expected_type == "TransformerBridge":
        assert report["logits"] < 1e-4  # raw weights: the logits themselves
    assert (report["checkpoint_index"], report["checkpoint_value"]) == (STEP1000_INDEX, 1000)
    assert report["dtype"] == "torch.float32"


def test_the_bridge_keeps_the_files_dtype_unless_told(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = with_tokenizer(tiny_checkpoints, tmp_path / "src")
    out = tmp_path / "out.safetensors"
    convert(cli, [str(source), "-o", str(out)])  # float16, as the source
    kept = pythia_tl.load(out, backend="bridge")
    assert next(kept.parameters()).dtype == torch.float16
    assert kept.cfg.checkpoint_index is None and kept.cfg.checkpoint_value is None
    wider = pythia_tl.load(out, backend="bridge", dtype="float32")
    assert next(wider.parameters()).dtype == torch.float32


def test_a_processed_or_partial_file_is_refused_by_the_bridge_with_the_route(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = with_tokenizer(tiny_checkpoints, tmp_path / "src")
    processed = tmp_path / "processed.safetensors"
    convert(cli, [str(source), "--process", "-o", str(processed)])
    with pytest.raises(OutputFileError) as caught:
        pythia_tl.load(processed, backend="bridge")
    message = str(caught.value)
    assert "processed (fold_ln" in message and "enable_compatibility_mode()" in message
    assert "backend='hooked'" in message and "\n" not in message
    partial = tmp_path / "partial.safetensors"
    convert(cli, [str(source), "--tensors", "embed.W_E", "-o", str(partial)])
    with pytest.raises(OutputFileError, match=r"partial file .*backend='hooked'"):
        pythia_tl.load(partial, backend="bridge")


def test_without_a_tokenizer_the_bridge_says_what_to_pass(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    with (
        pytest.warns(UserWarning),
        pytest.raises(SourceError, match=r"needs a tokenizer.*tokenizer"),
    ):
        pythia_tl.load(out, backend="bridge")


@pytest.mark.skipif(TL_MAJOR < 4, reason="TransformerLens 4 has no HookedTransformer")
def test_on_transformer_lens_4_the_hooked_backend_names_the_routes(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = tmp_path / "out.safetensors"
    convert(cli, [str(tiny_checkpoints["safetensors"]), "-o", str(out)])
    with pytest.raises(DependencyError) as caught:
        pythia_tl.load(out, backend="hooked")
    message = str(caught.value)
    assert "backend='bridge'" in message and "transformer-lens<4" in message
