"""The converter's processing against TransformerLens' own (2.x or 3.x), when it is installed.

Skipped otherwise: TransformerLens is not a test dependency (3.x needs transformers 5, 2.x older
ones). ``HookedTransformer.from_pretrained`` builds the model with ``normalization_type="LNPre"``
before it folds LayerNorm, and 2.x's ``load_and_process_state_dict`` does not switch an "LN"
model over by itself, so the model here is built the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from synthetic import PythiaShape, write_checkpoint
from transformers import GPTNeoXForCausalLM

from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.processing import TL_ORDER, Processing
from pythia_tl.source import resolve_source

transformer_lens = pytest.importorskip("transformer_lens")

BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")
SHAPE = PythiaShape(n_layers=2, d_model=160, n_heads=2, d_vocab=128, n_ctx=64)
CHOICES = {**{step: Processing(**{step: True}) for step in TL_ORDER}, "process": Processing.all()}

Tensors = dict[str, torch.Tensor]


def load_output(path: Path) -> tuple[Tensors, dict]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["tl_config"])  # noqa: SIM118


def converted(folder: Path, out: Path, processing: Processing) -> tuple[Tensors, dict]:
    convert(resolve_source(str(folder)), out, ConvertOptions(processing=processing))
    return load_output(out)


def hooked(cfg: dict) -> transformer_lens.HookedTransformer:
    config = transformer_lens.HookedTransformerConfig(**(cfg | {"tokenizer_name": None}))
    return transformer_lens.HookedTransformer(config)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tl-processing") / "ckpt"
    write_checkpoint(folder, SHAPE, layout="safetensors", dtype=torch.float32, seed=11)
    return folder


@pytest.mark.parametrize("choice", list(CHOICES))
def test_tensors_equal_transformer_lens_processing(
    choice: str, checkpoint: Path, tmp_path: Path
) -> None:
    processing = CHOICES[choice]
    raw, raw_cfg = converted(checkpoint, tmp_path / "raw.safetensors", Processing())
    ours, cfg = converted(checkpoint, tmp_path / "processed.safetensors", processing)
    model = hooked(raw_cfg | {"normalization_type": processing.normalization_type})
    model.load_and_process_state_dict(
        raw,
        fold_ln=processing.fold_ln,
        center_writing_weights=processing.center_writing_weights,
        center_unembed=processing.center_unembed,
        fold_value_biases=processing.fold_value_biases,
    )
    theirs = {k: v for k, v in model.state_dict().items() if not k.endswith(BUFFERS)}
    assert model.cfg.normalization_type == cfg["normalization_type"]
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[key], atol=1e-6, rtol=0, msg=key)


def test_processed_file_runs_in_a_model_built_from_its_own_config(
    checkpoint: Path, tmp_path: Path
) -> None:
    ours, cfg = converted(checkpoint, tmp_path / "processed.safetensors", Processing.all())
    model = hooked(cfg).eval()
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert unexpected == []
    assert all(key.endswith(BUFFERS) for key in missing), missing
    tokens = torch.randint(0, SHAPE.d_vocab, (2, 16), generator=torch.Generator().manual_seed(2))
    hf = GPTNeoXForCausalLM.from_pretrained(
        checkpoint, attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits.log_softmax(-1)
        actual = model(tokens).log_softmax(-1)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
