"""Raw conversion against TransformerLens' own GPT-NeoX conversion (TransformerLens 3.x).

TransformerLens is in the test extra, so this runs in CI; it is skipped only where it is missing.
Its ``convert_neox_weights`` reads a live transformers model, so the source checkpoint is loaded
with transformers, converted by both, and every tensor compared bit for bit (in the source dtype,
float16, where no arithmetic is involved).
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
from pythia_tl.source import resolve_source

transformer_lens = pytest.importorskip("transformer_lens")
loading = pytest.importorskip("transformer_lens.loading_from_pretrained")
neox = pytest.importorskip("transformer_lens.pretrained.weight_conversions.neox")

# Offline, with a private cache: TransformerLens must build everything from the local folder.
pytestmark = pytest.mark.usefixtures("hf_env")

BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")
SHAPES = {
    "4 heads": PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=96, n_ctx=64),
    "d_head 80, rotary_dim 20": PythiaShape(
        n_layers=2, d_model=160, n_heads=2, d_vocab=128, n_ctx=64
    ),
}


def ours(folder: Path, out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    convert(resolve_source(str(folder)), out)
    with safe_open(out, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return tensors, json.loads(f.metadata()["tl_config"])


def theirs(folder: Path, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], object]:
    hf = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    cfg = loading.get_pretrained_model_config(str(folder), device="cpu", dtype=dtype)
    with torch.no_grad():
        state = neox.convert_neox_weights(hf, cfg)
    return {k: v.detach().clone() for k, v in state.items()}, cfg


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded"])
def test_every_tensor_equals_transformer_lens_conversion(
    name: str, layout: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, SHAPES[name], layout=layout, seed=5, shard_bytes=32 * 1024)
    mine, cfg = ours(folder, tmp_path / "out.safetensors")
    expected, tl_cfg = theirs(folder, torch.float16)
    assert mine.keys() == expected.keys()
    for key, tensor in mine.items():
        assert tensor.dtype == expected[key].dtype == torch.float16, key
        assert torch.equal(tensor, expected[key]), key
    # The fields TransformerLens derives itself agree with the file's tl_config.
    for field in (
        "d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "eps", "d_vocab",
        "act_fn", "normalization_type", "positional_embedding_type", "rotary_dim",
        "rotary_adjacent_pairs", "parallel_attn_mlp", "original_architecture",
        "default_prepend_bos",
    ):  # fmt: skip
        assert cfg[field] == getattr(tl_cfg, field), field


def test_the_file_loads_into_a_hooked_transformer_and_reproduces_the_logits(
    tmp_path: Path,
) -> None:
    shape = SHAPES["d_head 80, rotary_dim 20"]
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, shape, layout="safetensors", dtype=torch.float32, seed=6)
    tensors, cfg = ours(folder, tmp_path / "out.safetensors")
    model = transformer_lens.HookedTransformer(
        transformer_lens.HookedTransformerConfig(**(cfg | {"tokenizer_name": None}))
    )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert unexpected == []
    assert missing and all(key.endswith(BUFFERS) for key in missing)
    tokens = torch.randint(0, shape.d_vocab, (2, 16), generator=torch.Generator().manual_seed(2))
    hf = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(input_ids=tokens).logits, atol=1e-4, rtol=0)


# RedPajama-INCITE's GPT-NeoX: the sequential block, rotary on the whole head.
SEQUENTIAL = PythiaShape(
    n_layers=2, d_model=64, n_heads=4, d_vocab=96, n_ctx=64, rotary_pct=1.0,
    parallel_residual=False,
)  # fmt: skip


def test_a_sequential_full_rotary_config_converts_as_transformer_lens_does(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, SEQUENTIAL, layout="safetensors", dtype=torch.float32, seed=8)
    tensors, cfg = ours(folder, tmp_path / "out.safetensors")
    assert cfg["parallel_attn_mlp"] is False
    assert cfg["rotary_dim"] == cfg["d_head"] == 16

    expected, tl_cfg = theirs(folder, torch.float32)
    assert tl_cfg.parallel_attn_mlp is False and tl_cfg.rotary_dim == 16
    assert tensors.keys() == expected.keys()
    for key, tensor in tensors.items():
        assert torch.equal(tensor, expected[key]), key

    model = transformer_lens.HookedTransformer(
        transformer_lens.HookedTransformerConfig(**(cfg | {"tokenizer_name": None}))
    )
    model.load_state_dict(tensors, strict=False)
    tokens = torch.randint(
        0, SEQUENTIAL.d_vocab, (2, 16), generator=torch.Generator().manual_seed(3)
    )
    hf = GPTNeoXForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert hf.config.use_parallel_residual is False
    with torch.no_grad():
        hf_logits = hf(input_ids=tokens).logits
        torch.testing.assert_close(model(tokens), hf_logits, atol=1e-4, rtol=0)
        # The test can fail: the same weights read as a parallel block give other logits.
        parallel = transformer_lens.HookedTransformer(
            transformer_lens.HookedTransformerConfig(
                **(cfg | {"tokenizer_name": None, "parallel_attn_mlp": True})
            )
        )
        parallel.load_state_dict(tensors, strict=False)
        assert not torch.allclose(parallel(tokens), hf_logits, atol=1e-3)
