"""The TL reference forward pass equals transformers' GPT-NeoX; synthetic checkpoints load in it.

The HF -> TL conversion here is the tests' own, written with plain indexing (``view`` per head)
so that it is an independent oracle for the project's converter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from synthetic import (
    LAYOUTS,
    PYTHIA_SHAPES,
    ConfigStyle,
    HeadName,
    Layout,
    PythiaShape,
    iter_tensors,
    write_checkpoint,
)
from tl_reference import tl_forward
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

ATOL = 1e-4


def tl_config(shape: PythiaShape, rotary_base: float = 10000) -> dict:
    return {
        "n_layers": shape.n_layers,
        "d_model": shape.d_model,
        "n_heads": shape.n_heads,
        "d_head": shape.d_head,
        "d_mlp": shape.mlp_dim,
        "d_vocab": shape.d_vocab,
        "n_ctx": shape.n_ctx,
        "eps": 1e-5,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": "rotary",
        "rotary_dim": shape.rotary_dim,
        "rotary_base": rotary_base,
        "rotary_adjacent_pairs": False,
        "parallel_attn_mlp": True,
    }


def hf_to_tl(hf: dict[str, torch.Tensor], shape: PythiaShape) -> dict[str, torch.Tensor]:
    """Per-head fused QKV rows: head 0's Q, K, V rows, then head 1's, and so on."""
    h, e, d = shape.n_heads, shape.d_head, shape.d_model
    head = hf["lm_head.weight"] if "lm_head.weight" in hf else hf["embed_out.weight"]
    tl = {
        "embed.W_E": hf["gpt_neox.embed_in.weight"],
        "ln_final.w": hf["gpt_neox.final_layer_norm.weight"],
        "ln_final.b": hf["gpt_neox.final_layer_norm.bias"],
        "unembed.W_U": head.T,
        "unembed.b_U": torch.zeros(shape.d_vocab),
    }
    for layer in range(shape.n_layers):
        p, b = f"gpt_neox.layers.{layer}.", f"blocks.{layer}."
        qkv_w = hf[p + "attention.query_key_value.weight"].view(h, 3, e, d)
        qkv_b = hf[p + "attention.query_key_value.bias"].view(h, 3, e)
        for index, part in enumerate("QKV"):
            tl[f"{b}attn.W_{part}"] = qkv_w[:, index].transpose(1, 2)  # [h, d_model, d_head]
            tl[f"{b}attn.b_{part}"] = qkv_b[:, index]
        # dense.weight is [d_model, h * e]: column block k belongs to head k.
        tl[b + "attn.W_O"] = hf[p + "attention.dense.weight"].view(d, h, e).permute(1, 2, 0)
        tl[b + "attn.b_O"] = hf[p + "attention.dense.bias"]
        tl[b + "ln1.w"] = hf[p + "input_layernorm.weight"]
        tl[b + "ln1.b"] = hf[p + "input_layernorm.bias"]
        tl[b + "ln2.w"] = hf[p + "post_attention_layernorm.weight"]
        tl[b + "ln2.b"] = hf[p + "post_attention_layernorm.bias"]
        tl[b + "mlp.W_in"] = hf[p + "mlp.dense_h_to_4h.weight"].T
        tl[b + "mlp.b_in"] = hf[p + "mlp.dense_h_to_4h.bias"]
        tl[b + "mlp.W_out"] = hf[p + "mlp.dense_4h_to_h.weight"].T
        tl[b + "mlp.b_out"] = hf[p + "mlp.dense_4h_to_h.bias"]
    return tl


def random_hf_model(
    shape: PythiaShape, style: ConfigStyle = "hub", rotary_base: float = 10000, seed: int = 0
) -> GPTNeoXForCausalLM:
    """A GPT-NeoX whose every weight, bias and LayerNorm parameter is random and non-trivial."""
    config_dict = shape.to_hf_config(style)
    if style == "hub":
        config_dict["rotary_emb_base"] = rotary_base
    else:
        config_dict["rope_parameters"]["rope_theta"] = rotary_base
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**config_dict, attn_implementation="eager"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layernorm" in name or "layer_norm" in name:
                param.copy_(1 + 0.3 * noise if name.endswith("weight") else 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            elif "embed_in" in name:
                param.copy_(noise)
            else:
                param.copy_(noise / param.shape[1] ** 0.5)
    return model.eval()


def tokens_for(shape: PythiaShape, n_pos: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape.d_vocab, (2, n_pos), generator=generator)


def hf_logits(model: GPTNeoXForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


SHAPES = {
    "4 heads": PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=100, n_ctx=64),
    "d_head 80, rotary 20": PythiaShape(n_layers=2, d_model=160, n_heads=2, d_vocab=128, n_ctx=64),
    "1 head": PythiaShape(n_layers=1, d_model=48, n_heads=1, d_vocab=64, n_ctx=64),
    "full rotary, d_mlp 96": PythiaShape(
        n_layers=2, d_model=64, n_heads=8, d_vocab=100, rotary_pct=1.0, n_ctx=64, d_mlp=96
    ),
}


@pytest.mark.parametrize("style", ["hub", "v5"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_reference_matches_transformers(shape: PythiaShape, style: ConfigStyle) -> None:
    model = random_hf_model(shape, style)
    tokens = tokens_for(shape)
    expected = hf_logits(model, tokens)
    tl = hf_to_tl(dict(model.state_dict()), shape)
    actual = tl_forward(tl, tl_config(shape), tokens)
    assert actual.dtype == torch.float32
    assert expected.abs().max() > 1  # logits big enough for a wrong pass to show
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_reference_honours_rotary_base() -> None:
    shape = SHAPES["d_head 80, rotary 20"]
    model = random_hf_model(shape, "v5", rotary_base=500)
    tokens = tokens_for(shape, n_pos=24)
    tl = hf_to_tl(dict(model.state_dict()), shape)
    expected = hf_logits(model, tokens)
    torch.testing.assert_close(
        tl_forward(tl, tl_config(shape, rotary_base=500), tokens), expected, atol=ATOL, rtol=0
    )
    assert not torch.allclose(tl_forward(tl, tl_config(shape), tokens), expected, atol=1e-2)


def is_layer_norm(name: str) -> bool:
    return name.startswith("ln_final.") or ".ln1." in name or ".ln2." in name


def fold_layer_norms(tl: dict[str, torch.Tensor], shape: PythiaShape) -> dict[str, torch.Tensor]:
    """Push every LayerNorm's w and b into the weights that read it (no centring)."""
    folded = {k: v for k, v in tl.items() if not is_layer_norm(k)}
    readers = [
        (f"blocks.{layer}.ln1", f"blocks.{layer}.attn.W_{p}", f"blocks.{layer}.attn.b_{p}")
        for layer in range(shape.n_layers)
        for p in "QKV"
    ]
    readers += [
        (f"blocks.{layer}.ln2", f"blocks.{layer}.mlp.W_in", f"blocks.{layer}.mlp.b_in")
        for layer in range(shape.n_layers)
    ]
    readers.append(("ln_final", "unembed.W_U", "unembed.b_U"))
    for ln, w_name, b_name in readers:
        w, b = tl[f"{ln}.w"], tl[f"{ln}.b"]
        weight = tl[w_name]
        # d_model is the second-to-last axis of W_Q/K/V ([h, d_model, e]), W_in and W_U.
        folded[b_name] = tl[b_name] + torch.einsum("d,...de->...e", b, weight)
        folded[w_name] = weight * w[:, None]
    return folded


def test_reference_lnpre_after_folding_layer_norms() -> None:
    shape = SHAPES["4 heads"]
    model = random_hf_model(shape)
    tokens = tokens_for(shape)
    tl = hf_to_tl(dict(model.state_dict()), shape)
    cfg = tl_config(shape) | {"normalization_type": "LNPre"}
    folded = fold_layer_norms(tl, shape)
    assert not any(is_layer_norm(k) for k in folded)
    torch.testing.assert_close(
        tl_forward(folded, cfg, tokens), hf_logits(model, tokens), atol=ATOL, rtol=0
    )


def _thirds(tl: dict[str, torch.Tensor], hf: dict[str, torch.Tensor], shape: PythiaShape) -> None:
    h, e, d = shape.n_heads, shape.d_head, shape.d_model
    for layer in range(shape.n_layers):
        weight = hf[f"gpt_neox.layers.{layer}.attention.query_key_value.weight"]
        for index, part in enumerate("QKV"):
            third = weight[index * d : (index + 1) * d].view(h, e, d)
            tl[f"blocks.{layer}.attn.W_{part}"] = third.transpose(1, 2)


MISTAKES: dict[str, Callable[..., None]] = {
    "QKV split in contiguous thirds": lambda tl, hf, shape, cfg: _thirds(tl, hf, shape),
    "rotary on the whole head": lambda tl, hf, shape, cfg: cfg.update(rotary_dim=shape.d_head),
    "sequential residual": lambda tl, hf, shape, cfg: cfg.update(parallel_attn_mlp=False),
    "tanh gelu": lambda tl, hf, shape, cfg: cfg.update(act_fn="gelu_new"),
    "W_O heads interleaved": lambda tl, hf, shape, cfg: tl.update(
        {
            f"blocks.{i}.attn.W_O": hf[f"gpt_neox.layers.{i}.attention.dense.weight"]
            .view(shape.d_model, shape.d_head, shape.n_heads)
            .permute(2, 1, 0)
            for i in range(shape.n_layers)
        }
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES.values(), ids=MISTAKES.keys())
def test_comparison_catches_conversion_mistakes(mistake: Callable[..., None]) -> None:
    shape = SHAPES["4 heads"]
    model = random_hf_model(shape)
    tokens = tokens_for(shape)
    hf = dict(model.state_dict())
    tl, cfg = hf_to_tl(hf, shape), tl_config(shape)
    mistake(tl, hf, shape, cfg)
    difference = (tl_forward(tl, cfg, tokens) - hf_logits(model, tokens)).abs().max()
    assert difference > 3 * ATOL  # tanh gelu is the closest call, near 6e-4


# --- synthetic checkpoints --------------------------------------------------------------------

SYNTH_SHAPE = PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=256, n_ctx=64)
SYNTH_SEED = 3
SMALL_SHARDS = 40 * 1024


@cache
def synthetic_reference() -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, TL-reference logits) of the in-memory tensors of SYNTH_SHAPE and SYNTH_SEED."""
    hf = {name: t.float() for name, t in iter_tensors(SYNTH_SHAPE, seed=SYNTH_SEED)}
    tokens = tokens_for(SYNTH_SHAPE)
    return tokens, tl_forward(hf_to_tl(hf, SYNTH_SHAPE), tl_config(SYNTH_SHAPE), tokens)


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.suffix == ".bin":
            tensors.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        else:
            with safe_open(path, "pt") as f:
                names = f.keys()
                tensors.update({name: f.get_tensor(name) for name in names})
    return tensors


@pytest.mark.parametrize("head_name", ["embed_out", "lm_head"])
@pytest.mark.parametrize("config_style", ["hub", "v5"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_synthetic_checkpoint_loads_in_transformers(
    tmp_path: Path, layout: Layout, config_style: ConfigStyle, head_name: HeadName
) -> None:
    write_checkpoint(
        tmp_path,
        SYNTH_SHAPE,
        layout=layout,
        config_style=config_style,
        head_name=head_name,
        seed=SYNTH_SEED,
        shard_bytes=SMALL_SHARDS,
    )
    model, info = GPTNeoXForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    # Legacy buffers (in the .bin files) and either head name load without complaint.
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    tokens, expected = synthetic_reference()
    torch.testing.assert_close(hf_logits(model, tokens), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synthetic_files_match_the_layout(tmp_path: Path, layout: Layout) -> None:
    write_checkpoint(
        tmp_path, SYNTH_SHAPE, layout=layout, seed=SYNTH_SEED, shard_bytes=SMALL_SHARDS
    )
    is_bin = layout.startswith("bin")
    files = weight_files(tmp_path)
    tensors = read_all(tmp_path)
    expected = dict(iter_tensors(SYNTH_SHAPE, seed=SYNTH_SEED, legacy_buffers=is_bin))
    assert sorted(tensors) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(tensors[name], tensor), name
    buffers = [n for n in tensors if n.endswith(("attention.bias", "masked_bias", "inv_freq"))]
    assert len(buffers) == (3 * SYNTH_SHAPE.n_layers if is_bin else 0)
    if is_bin:
        mask = tensors["gpt_neox.layers.0.attention.bias"]
        assert mask.dtype == torch.uint8 and mask.shape == (1, 1, 64, 64)
        assert torch.equal(mask[0, 0], torch.tril(torch.ones(64, 64, dtype=torch.uint8)))
        inv_freq = tensors["gpt_neox.layers.0.attention.rotary_emb.inv_freq"]
        assert inv_freq.dtype == torch.float32 and inv_freq.shape == (SYNTH_SHAPE.rotary_dim // 2,)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rotary_pct"] == 0.25 and config["torch_dtype"] == "float16"
    if not layout.endswith("sharded"):
        assert [p.name for p in files] == [("pytorch_model.bin" if is_bin else "model.safetensors")]
        return
    stem, suffix = ("pytorch_model", ".bin") if is_bin else ("model", ".safetensors")
    index = json.loads((tmp_path / f"{stem}{suffix}.index.json").read_text())
    n = len(files)
    assert n >= 3
    assert [p.name for p in files] == [
        f"{stem}-{k:05d}-of-{n:05d}{suffix}" for k in range(1, n + 1)
    ]
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == {p.name for p in files}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == total
    for path in files:  # each shard holds exactly what the index says it does
        listed = {name for name, file in index["weight_map"].items() if file == path.name}
        assert listed == names_in(path)


def names_in(path: Path) -> set[str]:
    if path.suffix == ".bin":
        return set(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    with safe_open(path, "pt") as f:
        return set(f.keys())


def test_synthetic_buffer_choices_and_v5_config(tmp_path: Path) -> None:
    write_checkpoint(
        tmp_path / "a",
        SYNTH_SHAPE,
        layout="safetensors",
        legacy_buffers="always",
        config_style="v5",
    )
    assert "gpt_neox.layers.1.attention.masked_bias" in read_all(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["rope_parameters"] == {
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000,
        "rope_type": "default",
    }
    assert config["dtype"] == "float16"
    assert "rotary_pct" not in config and "torch_dtype" not in config
    write_checkpoint(tmp_path / "b", SYNTH_SHAPE, layout="bin", legacy_buffers=False)
    assert not any("inv_freq" in name for name in read_all(tmp_path / "b"))


def test_synthetic_values_depend_on_seed_and_not_on_dtype() -> None:
    half = dict(iter_tensors(SYNTH_SHAPE, seed=1))
    full = dict(iter_tensors(SYNTH_SHAPE, seed=1, dtype=torch.float32))
    other = dict(iter_tensors(SYNTH_SHAPE, seed=2))
    lm_head = dict(iter_tensors(SYNTH_SHAPE, seed=1, head_name="lm_head"))
    for name, tensor in half.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(full[name].half(), tensor)
    assert torch.equal(lm_head["lm_head.weight"], half["embed_out.weight"])
    assert not torch.equal(other["gpt_neox.embed_in.weight"], half["gpt_neox.embed_in.weight"])
    # Every bias and LayerNorm parameter is far from the trivial 0 / 1.
    for name, tensor in half.items():
        if name.endswith("bias"):
            assert tensor.float().abs().mean() > 0.02, name
        if "norm.weight" in name:
            assert (tensor.float() - 1).abs().mean() > 0.02, name


def test_pythia_shapes_match_the_reference_table() -> None:
    table = {  # model: (d_head, rotary_dim, fp16 GB)
        "pythia-14m": (32, 8, 0.05),
        "pythia-31m": (32, 8, 0.09),
        "pythia-70m": (64, 16, 0.17),
        "pythia-160m": (64, 16, 0.38),
        "pythia-410m": (64, 16, 0.91),
        "pythia-1b": (256, 64, 2.1),
        "pythia-1.4b": (128, 32, 2.9),
        "pythia-2.8b": (80, 20, 5.7),
        "pythia-6.9b": (128, 32, 13.9),
        "pythia-12b": (128, 32, 23.8),
    }
    assert set(table) == set(PYTHIA_SHAPES)
    for name, (d_head, rotary_dim, gigabytes) in table.items():
        shape = PYTHIA_SHAPES[name]
        assert (shape.d_head, shape.rotary_dim) == (d_head, rotary_dim), name
        # The Hub's .bin files: float16 weights plus a 1-byte [2048, 2048] mask per layer.
        size = shape.n_params * 2 + shape.n_layers * shape.n_ctx**2
        assert size / 1e9 == pytest.approx(gigabytes, rel=0.03, abs=0.005), name
    assert PYTHIA_SHAPES["pythia-70m"].n_params == 70_426_624
