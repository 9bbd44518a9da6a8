"""End to end: a checkpoint folder in, a TransformerLens file out, the source logits reproduced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TinyCheckpoints
from safetensors import safe_open
from synthetic import PythiaShape, write_checkpoint
from tl_reference import tl_forward
from transformers import GPTNeoXForCausalLM

from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.source import resolve_source

ATOL = 1e-4

SHAPES = {
    "4 heads": PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=96, n_ctx=64),
    "d_head 80, rotary_dim 20 (as pythia-2.8b)": PythiaShape(
        n_layers=2, d_model=160, n_heads=2, d_vocab=128, n_ctx=64
    ),
    "1 head": PythiaShape(n_layers=1, d_model=48, n_heads=1, d_vocab=64, n_ctx=64),
    "8 heads, d_mlp 96": PythiaShape(
        n_layers=3, d_model=64, n_heads=8, d_vocab=80, n_ctx=64, d_mlp=96
    ),
}


def load_output(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def hf_logits(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = GPTNeoXForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def tokens_for(d_vocab: int, n_pos: int = 16) -> torch.Tensor:
    return torch.randint(0, d_vocab, (2, n_pos), generator=torch.Generator().manual_seed(1))


def convert_folder(folder: Path, output: Path, **options: object) -> None:
    convert(resolve_source(str(folder)), output, ConvertOptions(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(SHAPES))
def test_converted_weights_reproduce_the_source_logits(name: str, tmp_path: Path) -> None:
    shape = SHAPES[name]
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, shape, layout="safetensors", dtype=torch.float32, seed=3)
    out = tmp_path / "out.safetensors"
    convert_folder(folder, out)
    tensors, metadata = load_output(out)
    assert len(tensors) == 16 * shape.n_layers + 5
    cfg = json.loads(metadata["tl_config"])
    tokens = tokens_for(shape.d_vocab)
    torch.testing.assert_close(
        tl_forward(tensors, cfg, tokens), hf_logits(folder, tokens), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize(
    "layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded", "v5-lm_head"]
)
def test_every_layout_converts_to_the_same_tensors(
    layout: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    reference = tmp_path / "reference.safetensors"
    convert_folder(tiny_checkpoints["safetensors"], reference)
    out = tmp_path / f"{layout}.safetensors"
    convert_folder(tiny_checkpoints[layout], out)
    expected, expected_meta = load_output(reference)
    tensors, metadata = load_output(out)
    assert tensors.keys() == expected.keys()
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, expected[key]), key
    cfg = json.loads(metadata["tl_config"])
    assert cfg == json.loads(expected_meta["tl_config"]) | {"model_name": layout}
    tokens = tokens_for(tiny_checkpoints.shape.d_vocab)
    torch.testing.assert_close(
        tl_forward(tensors, cfg, tokens),
        hf_logits(tiny_checkpoints[layout], tokens),
        atol=ATOL,
        rtol=0,
    )


def test_metadata_records_the_conversion(tiny_checkpoints: TinyCheckpoints, tmp_path: Path) -> None:
    folder = tiny_checkpoints["safetensors-sharded"]
    out = tmp_path / "out.safetensors"
    convert_folder(folder, out)
    _, metadata = load_output(out)
    shards = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    assert len(shards) > 1
    assert json.loads(metadata["source_files"]) == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards
    }
    assert metadata["format"] == "pt"
    assert metadata["source"] == str(folder.resolve())
    assert (metadata["revision"], metadata["commit"]) == ("", "")
    assert metadata["converter"] == "pythia-tl"
    assert json.loads(metadata["processing"]) == []
    cfg = json.loads(metadata["tl_config"])
    shape = tiny_checkpoints.shape
    assert cfg == {
        "d_model": shape.d_model,
        "d_head": shape.d_head,
        "n_heads": shape.n_heads,
        "d_mlp": 4 * shape.d_model,
        "n_layers": shape.n_layers,
        "n_ctx": shape.n_ctx,
        "eps": 1e-5,
        "d_vocab": shape.d_vocab,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": "rotary",
        "rotary_dim": shape.rotary_dim,
        "rotary_base": 10000,
        "rotary_adjacent_pairs": False,
        "parallel_attn_mlp": True,
        "original_architecture": "GPTNeoXForCausalLM",
        "default_prepend_bos": False,
        "tokenizer_name": None,
        "model_name": folder.name,
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtype_casts_every_tensor(
    dtype: str, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    reference = tmp_path / "auto.safetensors"
    convert_folder(tiny_checkpoints["bin"], reference)
    out = tmp_path / f"{dtype}.safetensors"
    convert_folder(tiny_checkpoints["bin"], out, dtype=dtype)
    expected, _ = load_output(reference)
    tensors, metadata = load_output(out)
    assert metadata["dtype"] == dtype
    for key, tensor in tensors.items():
        assert tensor.dtype == getattr(torch, dtype)
        assert torch.equal(tensor, expected[key].to(tensor.dtype)), key


def test_output_is_reproducible_byte_for_byte(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    convert_folder(tiny_checkpoints["bin-sharded"], first)
    convert_folder(tiny_checkpoints["bin-sharded"], second)
    assert first.read_bytes() == second.read_bytes()
