"""``pythia-tl export``: a converted file back as a Hugging Face GPT-NeoX folder, bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, Run, TinyCheckpoints
from safetensors.torch import load_file
from test_load import offline_python
from tiny_tokenizer import write_tokenizer

from pythia_tl.errors import OutputError, OutputFileError
from pythia_tl.export import export_hf_folder
from pythia_tl.mapping.pythia import IGNORED_SOURCE_KEYS
from pythia_tl.source.tokenizer_files import TOKENIZER_FILES

# The Hub config fields that define the model, as the exported config.json must spell them.
MODEL_FIELDS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "max_position_embeddings",
    "vocab_size",
    "layer_norm_eps",
    "hidden_act",
    "rotary_pct",
    "rotary_emb_base",
    "use_parallel_residual",
    "tie_word_embeddings",
)


def source_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of a checkpoint folder by its canonical name (no legacy buffers)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            tensors.update(load_file(path))
        elif path.suffix == ".bin":
            tensors.update(torch.load(path, map_location="cpu", weights_only=True))
    if "lm_head.weight" in tensors:
        tensors["embed_out.weight"] = tensors.pop("lm_head.weight")
    return {k: v for k, v in tensors.items() if not IGNORED_SOURCE_KEYS.fullmatch(k)}


def converted(cli: Run, source: Path, out: Path, *extra: str) -> Path:
    status, _, err = cli(["convert", str(source), "-o", str(out), "--quiet", *extra])
    assert status == 0, err
    return out


@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded", "v5-lm_head"])
def test_export_gives_back_every_source_tensor_bit_for_bit(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run, layout: str
) -> None:
    source = tiny_checkpoints[layout]
    out = converted(cli, source, tmp_path / "out.safetensors")
    status, _, err = cli(["export", str(out), "-o", str(tmp_path / "hf")])
    assert status == 0, err
    assert "wrote" in err and "no tokenizer files" in err
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    expected = source_tensors(source)
    assert sorted(exported) == sorted(expected)
    for name, tensor in expected.items():
        assert exported[name].dtype == tensor.dtype, name
        assert exported[name].view(torch.uint8).equal(tensor.contiguous().view(torch.uint8)), name
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    hub_config = json.loads((tiny_checkpoints["safetensors"] / "config.json").read_text())
    for field in MODEL_FIELDS:
        assert config[field] == hub_config.get(field, config[field]), field
        assert field in config
    assert (config["torch_dtype"], config["bos_token_id"], config["eos_token_id"]) == (
        "float16",
        0,
        0,
    )


def test_transformers_and_the_bridge_load_the_exported_folder_offline_with_equal_logits(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    """The README's TransformerLens 4 section: export, then TransformerBridge.boot_transformers
    (TransformerLens 3.x has the same bridge) and transformers' from_pretrained."""
    from transformers import GPTNeoXForCausalLM

    source = tmp_path / "src"
    shutil.copytree(tiny_checkpoints["safetensors"], source)
    write_tokenizer(source, tiny_checkpoints.shape.d_vocab)
    out = converted(cli, source, tmp_path / "out.safetensors", "--dtype", "float32")
    status, stdout, err = cli(["export", str(out), "-o", str(tmp_path / "hf"), "--json"])
    assert status == 0, err
    report = json.loads(stdout)
    assert report["tokenizer_files"] == list(TOKENIZER_FILES)
    assert report["tensors"] == 12 * tiny_checkpoints.shape.n_layers + 4
    for name in TOKENIZER_FILES:
        assert (tmp_path / "hf" / name).read_bytes() == (source / name).read_bytes()

    tokens = torch.tensor([[0, 5, 9, 2, 100, 7, 3, 3, 41]])
    ours = GPTNeoXForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    theirs = GPTNeoXForCausalLM.from_pretrained(
        source, dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, theirs(tokens).logits)

    example = REPO_ROOT / "examples" / "export_for_transformer_lens_4.py"
    result = offline_python([str(example), str(tmp_path / "hf")])
    assert result.returncode == 0, result.stderr
    difference = float(result.stdout.rsplit(" ", 1)[1])
    assert difference < 1e-4


def test_processed_and_partial_files_are_refused_with_the_reason(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    source = tiny_checkpoints["safetensors"]
    processed = converted(cli, source, tmp_path / "p.safetensors", "--fold-ln")
    with pytest.raises(OutputFileError, match=r"processed \(fold_ln\).*unembedding bias"):
        export_hf_folder(processed, tmp_path / "hf")
    partial = converted(cli, source, tmp_path / "partial.safetensors", "--layers", "0")
    status, _, err = cli(["export", str(partial), "-o", str(tmp_path / "hf")])
    assert status == 1 and "a partial file" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_folder_is_replaced_only_with_force(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path, cli: Run
) -> None:
    out = converted(cli, tiny_checkpoints["safetensors"], tmp_path / "out.safetensors")
    target = tmp_path / "hf"
    target.mkdir()  # empty: used
    export_hf_folder(out, target)
    assert (target / "model.safetensors").is_file()
    (target / "notes.txt").write_text("mine")
    status, _, err = cli(["export", str(out), "-o", str(target)])
    assert status == 1 and "--force" in err and "not empty" in err
    assert (target / "notes.txt").exists()
    with pytest.raises(OutputError, match="overwrite=True"):
        export_hf_folder(out, target)
    status, _, err = cli(["export", str(out), "-o", str(target), "--force"])
    assert status == 0, err
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("n_layers", 10**8, "tl_config n_layers is 100000000, expected an integer in [1, 1024]"),
        ("selection", {"layers": "0-999999"}, "metadata 'selection' is malformed"),
    ],
)
def test_sizes_a_file_records_are_bounded_before_load_or_export_plans_from_them(
    field: str,
    value: object,
    fragment: str,
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
    cli: Run,
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    import pythia_tl

    out = converted(cli, tiny_checkpoints["safetensors"], tmp_path / "x.safetensors")
    with safe_open(out, framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    if field == "selection":
        metadata["selection"] = json.dumps(value)
    else:
        cfg = json.loads(metadata["tl_config"])
        cfg[field] = value
        metadata["tl_config"] = json.dumps(cfg)
    save_file(tensors, out, metadata=metadata)
    with pytest.raises(OutputFileError) as refused:
        export_hf_folder(out, tmp_path / "hf")
    assert fragment in str(refused.value)
    with pytest.raises(OutputFileError) as refused:
        pythia_tl.load(out)
    assert fragment in str(refused.value)
