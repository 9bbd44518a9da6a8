"""config.json parsing and Pythia names."""

from __future__ import annotations

import pytest

from pythia_tl.errors import ConfigError, UsageError
from pythia_tl.source.config import parse_config
from pythia_tl.source.names import resolve_model_name, step_revision, training_steps

HUB = {
    "model_type": "gpt_neox",
    "hidden_size": 2560,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "intermediate_size": 10240,
    "vocab_size": 50304,
    "max_position_embeddings": 2048,
    "layer_norm_eps": 1e-5,
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "use_parallel_residual": True,
    "hidden_act": "gelu",
    "torch_dtype": "float16",
}
V5 = {k: v for k, v in HUB.items() if k not in ("rotary_pct", "rotary_emb_base", "torch_dtype")}
V5 |= {
    "rope_parameters": {
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000.0,
        "rope_type": "default",
    },
    "dtype": "float16",
}


@pytest.mark.parametrize("raw", [HUB, V5], ids=["hub", "transformers-5"])
def test_both_spellings_give_the_same_config(raw: dict) -> None:
    config = parse_config(raw)
    assert (config.d_head, config.rotary_dim, config.rotary_base) == (80, 20, 10000.0)
    assert config.dtype == "float16"
    assert config == parse_config(HUB)


# The values TransformerLens expresses, spelled out as transformers 5 writes them, convert.
@pytest.mark.parametrize(
    "change",
    [
        {"attention_bias": True, "tie_word_embeddings": False, "rope_scaling": None},
        {"use_parallel_residual": False, "rotary_pct": 1.0},
    ],
)
def test_fields_transformer_lens_expresses_are_accepted(change: dict) -> None:
    config = parse_config(HUB | change)
    assert config.parallel_residual is change.get("use_parallel_residual", True)
    assert config.rotary_dim == config.d_head * change.get("rotary_pct", 0.25)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 0}, "num_attention_heads is 0"),
        ({"num_attention_heads": 3}, "not divisible"),
        ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
        ({"hidden_size": -1}, "hidden_size is -1"),
        ({"hidden_size": "big"}, "hidden_size is 'big'"),
        ({"rotary_pct": 2}, "rotary_pct"),
        ({"model_type": "llama"}, "expected 'gpt_neox'"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"vocab_size": None}, "missing field 'vocab_size'"),
    ],
)
def test_absurd_values_are_refused_by_name(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(HUB | change)


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("pythia-70m", "EleutherAI/pythia-70m"),
        ("pythia-410m-deduped", "EleutherAI/pythia-410m-deduped"),
        ("pythia-1b-v0", "EleutherAI/pythia-1b-v0"),
        ("pythia-19m", "EleutherAI/pythia-70m"),
        ("pythia-1.3b-deduped", "EleutherAI/pythia-1.4b-deduped"),
        ("pythia-160m-seed1", "EleutherAI/pythia-160m-seed1"),
        ("pythia-14m-seed9", "EleutherAI/pythia-14m-seed9"),
        ("pythia-160m-data-seed2", "EleutherAI/pythia-160m-data-seed2"),
        ("pythia-160m-weight-seed3", "EleutherAI/pythia-160m-weight-seed3"),
        ("someone/my-neox", "someone/my-neox"),
    ],
)
def test_short_and_old_names_map_to_repositories(name: str, repo: str) -> None:
    assert resolve_model_name(name).repo_id == repo


@pytest.mark.parametrize(
    "name",
    [
        "pythia-71m",
        "gpt2",
        "pythia-70m-turbo",
        # PolyPythias has seed runs of 14m-410m only, data/weight seeds of 160m only, 1-3.
        "pythia-1b-seed1",
        "pythia-160m-data-seed4",
        "pythia-70m-weight-seed1",
        "pythia-160m-deduped-seed1",
    ],
)
def test_unknown_short_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="unknown model name"):
        resolve_model_name(name)


def test_schedule_has_154_steps_and_143_for_v0() -> None:
    steps = training_steps()
    assert len(steps) == 154 and steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-1] == 143000
    assert len(training_steps(v0=True)) == 143


def test_steps_are_checked_against_the_schedule() -> None:
    model = resolve_model_name("pythia-70m")
    assert step_revision(1000, model) == "step1000"
    with pytest.raises(UsageError, match="no checkpoint at that step"):
        step_revision(1500, model)
    with pytest.raises(UsageError, match="no checkpoint"):
        step_revision(512, resolve_model_name("pythia-70m-v0"))
