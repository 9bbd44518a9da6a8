"""TransformerLens weight processing in the converter: each step's invariants, its exact values
against a whole-state-dict oracle, the source model's log-probabilities kept, float32 arithmetic
whatever the dtypes, streaming part by part, and the metadata, plan, inspect and CLI wiring.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import CliResult, Run, TinyCheckpoints
from safetensors import safe_open
from synthetic import PythiaShape, write_checkpoint
from tl_reference import tl_forward
from transformers import GPTNeoXForCausalLM

from pythia_tl.engine.convert import convert
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.engine.pipeline import Converted, convert_tensors
from pythia_tl.errors import PlanError
from pythia_tl.mapping.plan import ConversionPlan, plan_conversion
from pythia_tl.processing import TL_ORDER, Processing, arithmetic, plan_processing, process_stream
from pythia_tl.processing.plan import CHANGES, DROPS
from pythia_tl.source import resolve_source
from pythia_tl.source.reader import TensorReader

ATOL = 1e-4
# Means of centred float32 tensors are zero up to rounding of sums of O(1) values.
CENTRED = 1e-6

SHAPES = {
    "4 heads": PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=96, n_ctx=64),
    "d_head 80, rotary_dim 20": PythiaShape(
        n_layers=2, d_model=160, n_heads=2, d_vocab=128, n_ctx=64
    ),
    "8 heads, d_mlp 96": PythiaShape(
        n_layers=3, d_model=64, n_heads=8, d_vocab=80, n_ctx=64, d_mlp=96
    ),
}
SINGLE_STEPS = {step: Processing(**{step: True}) for step in TL_ORDER}
CHOICES = {**SINGLE_STEPS, "process": Processing.all()}

Tensors = dict[str, torch.Tensor]


def load_output(path: Path) -> tuple[Tensors, dict[str, str]]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def convert_folder(folder: Path, output: Path, processing: Processing, dtype: str = "auto") -> None:
    options = ConvertOptions(dtype=dtype, processing=processing)
    convert(resolve_source(str(folder)), output, options)


@pytest.fixture(scope="module")
def float32_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("processing-checkpoints")
    folders = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        folders[name] = root / f"shape{i}"
        write_checkpoint(folders[name], shape, layout="safetensors", dtype=torch.float32, seed=5)
    return folders


@pytest.fixture(scope="module")
def raw_outputs(
    float32_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Tensors]:
    root = tmp_path_factory.mktemp("processing-raw")
    raw = {}
    for name, folder in float32_checkpoints.items():
        convert_folder(folder, root / f"{folder.name}.safetensors", Processing())
        raw[name], _ = load_output(root / f"{folder.name}.safetensors")
    return raw


def reference_processing(raw: Tensors, processing: Processing, n_layers: int) -> Tensors:
    """TransformerLens' processing over a whole state dict (REFERENCE.md section 2), computed
    in the dtype of ``raw``; an oracle independent of the converter's part-by-part code."""
    sd = dict(raw)

    def fold(ln: str, weight: str, bias: str, axis: int) -> None:
        w, b = sd[f"{ln}.w"], sd[f"{ln}.b"]
        shape = [1] * sd[weight].ndim
        shape[axis] = -1
        sd[bias] = sd[bias] + (sd[weight] * b.view(shape)).sum(axis)
        scaled = sd[weight] * w.view(shape)
        sd[weight] = scaled - scaled.mean(axis, keepdim=True)

    if processing.fold_ln:
        for layer in range(n_layers):
            p = f"blocks.{layer}."
            for x in "QKV":
                fold(p + "ln1", p + f"attn.W_{x}", p + f"attn.b_{x}", 1)
            fold(p + "ln2", p + "mlp.W_in", p + "mlp.b_in", 0)
        fold("ln_final", "unembed.W_U", "unembed.b_U", 0)
        for key in [k for k in sd if k.endswith((".ln1.w", ".ln1.b", ".ln2.w", ".ln2.b"))]:
            del sd[key]
        del sd["ln_final.w"], sd["ln_final.b"]
    if processing.center_writing_weights:
        writers = ["embed.W_E"] + [
            f"blocks.{layer}.{name}"
            for layer in range(n_layers)
            for name in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")
        ]
        for key in writers:
            sd[key] = sd[key] - sd[key].mean(-1, keepdim=True)
    if processing.center_unembed:
        for key in ("unembed.W_U", "unembed.b_U"):
            sd[key] = sd[key] - sd[key].mean(-1, keepdim=True)
    if processing.fold_value_biases:
        for layer in range(n_layers):
            p = f"blocks.{layer}.attn."
            sd[p + "b_O"] = sd[p + "b_O"] + torch.einsum("hd,hdm->m", sd[p + "b_V"], sd[p + "W_O"])
            sd[p + "b_V"] = torch.zeros_like(sd[p + "b_V"])
    return sd


@pytest.mark.parametrize("choice", list(CHOICES))
def test_each_step_holds_its_invariants_and_changes_nothing_else(
    choice: str,
    float32_checkpoints: dict[str, Path],
    raw_outputs: dict[str, Tensors],
    tmp_path: Path,
) -> None:
    name = "d_head 80, rotary_dim 20"
    processing = CHOICES[choice]
    out = tmp_path / "out.safetensors"
    convert_folder(float32_checkpoints[name], out, processing)
    sd, _ = load_output(out)
    raw = raw_outputs[name]
    layers = range(SHAPES[name].n_layers)

    def mean_abs(key: str, axis: int) -> float:
        return sd[key].mean(axis).abs().max().item()

    def raw_mean_abs(key: str, axis: int) -> float:
        return raw[key].mean(axis).abs().max().item()

    if processing.fold_value_biases:
        assert all(torch.equal(sd[f"blocks.{i}.attn.b_V"], torch.zeros(2, 80)) for i in layers)
    if processing.center_unembed:
        assert mean_abs("unembed.W_U", -1) < CENTRED < raw_mean_abs("unembed.W_U", -1)
        assert abs(sd["unembed.b_U"].mean().item()) < CENTRED
    if processing.center_writing_weights:
        assert mean_abs("embed.W_E", -1) < CENTRED < raw_mean_abs("embed.W_E", -1)
        for i in layers:
            for key in (f"blocks.{i}.attn.W_O", f"blocks.{i}.mlp.W_out"):
                assert mean_abs(key, -1) < CENTRED < raw_mean_abs(key, -1), key
            for key in (f"blocks.{i}.attn.b_O", f"blocks.{i}.mlp.b_out"):
                assert mean_abs(key, 0) < CENTRED < raw_mean_abs(key, 0), key
    if processing.fold_ln:
        assert not [k for k in sd if ".ln" in k or k.startswith("ln_final")]
        for i in layers:
            for x in "QKV":
                key = f"blocks.{i}.attn.W_{x}"
                assert mean_abs(key, 1) < CENTRED < raw_mean_abs(key, 1), key
            key = f"blocks.{i}.mlp.W_in"
            assert mean_abs(key, 0) < CENTRED < raw_mean_abs(key, 0), key
        assert mean_abs("unembed.W_U", 0) < CENTRED < raw_mean_abs("unembed.W_U", 0)
    # Whatever no chosen step claims to change is written exactly as converted, and only the
    # dropped LayerNorms are missing.
    changed = {n for name in processing.passes for names in CHANGES[name].values() for n in names}
    dropped = {
        n for name in processing.passes for names in DROPS.get(name, {}).values() for n in names
    }
    for key, tensor in raw.items():
        local = key.split(".", 2)[2] if key.startswith("blocks.") else key
        if local in dropped:
            assert key not in sd
        elif local not in changed:
            assert torch.equal(sd[key], tensor), key
    assert sd.keys() <= raw.keys()


# 7 tokens a chunk: the test vocabulary of 80 makes 11 chunks and a short one.
@pytest.mark.parametrize("chunk_tokens", [None, 7], ids=["default chunks", "7-token chunks"])
@pytest.mark.parametrize("choice", list(CHOICES))
def test_values_match_whole_state_dict_processing(
    choice: str,
    chunk_tokens: int | None,
    float32_checkpoints: dict[str, Path],
    raw_outputs: dict[str, Tensors],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "8 heads, d_mlp 96"
    if chunk_tokens is not None:  # the vocabulary is processed a chunk at a time
        monkeypatch.setattr(arithmetic, "CHUNK_ELEMENTS", chunk_tokens * SHAPES[name].d_model)
    out = tmp_path / "out.safetensors"
    convert_folder(float32_checkpoints[name], out, CHOICES[choice])
    sd, _ = load_output(out)
    expected = reference_processing(raw_outputs[name], CHOICES[choice], SHAPES[name].n_layers)
    assert sd.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(sd[key], tensor, atol=1e-6, rtol=0, msg=key)


def test_the_vocabulary_is_rounded_once_to_the_output_dtype(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    """A bfloat16 stream for a float16 output: the embedding and unembedding must not be rounded
    to bfloat16 on the way (processed in place, they would be)."""
    checkpoint = resolve_source(str(tiny_checkpoints["safetensors"])).checkpoint
    plan = plan_processing(plan_conversion(checkpoint, "float16"), Processing.all())
    generator = torch.Generator().manual_seed(5)
    source = [
        (t, torch.randn(t.shape, generator=generator)) for t in plan_conversion(checkpoint).tensors
    ]
    bfloat16 = [(t, x.to(torch.bfloat16)) for t, x in source]
    float32 = [(t, x.to(torch.float32)) for t, x in bfloat16]  # the same values, exactly
    got = {t.key: x.to(torch.float16) for t, x in process_stream(plan, bfloat16)}
    expected = {t.key: x.to(torch.float16) for t, x in process_stream(plan, float32)}
    for key in ("embed.W_E", "unembed.W_U"):
        assert torch.equal(got[key], expected[key]), key


def test_an_unembedding_sharing_memory_is_processed_in_a_copy(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    plan = plan_conversion(resolve_source(str(tiny_checkpoints["safetensors"])).checkpoint)
    generator = torch.Generator().manual_seed(3)
    stream = [(t, torch.randn(t.shape, generator=generator)) for t in plan.tensors]
    (index,) = [i for i, (t, _) in enumerate(stream) if t.key == "unembed.W_U"]
    w_u = stream[index][1]
    # The unembedding as a slice of a larger copy, as Q, K and V are of query_key_value's.
    shared = torch.cat([w_u, w_u])
    stream[index] = (stream[index][0], shared[: len(w_u)])
    before = shared.clone()
    processed = dict(process_stream(plan_processing(plan, Processing.all()), stream))
    assert torch.equal(shared, before)
    assert not torch.equal(processed[stream[index][0]], w_u)


@pytest.fixture(scope="module")
def hf_log_probs(float32_checkpoints: dict[str, Path]) -> dict[str, torch.Tensor]:
    log_probs = {}
    for name, folder in float32_checkpoints.items():
        model = GPTNeoXForCausalLM.from_pretrained(
            folder, attn_implementation="eager", dtype=torch.float32
        ).eval()
        with torch.no_grad():
            log_probs[name] = model(input_ids=tokens_for(SHAPES[name])).logits.log_softmax(-1)
    return log_probs


def tokens_for(shape: PythiaShape) -> torch.Tensor:
    return torch.randint(0, shape.d_vocab, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("choice", list(CHOICES))
@pytest.mark.parametrize("name", list(SHAPES))
def test_processed_model_keeps_the_source_log_probabilities(
    name: str,
    choice: str,
    float32_checkpoints: dict[str, Path],
    hf_log_probs: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.safetensors"
    convert_folder(float32_checkpoints[name], out, CHOICES[choice])
    sd, metadata = load_output(out)
    cfg = json.loads(metadata["tl_config"])
    assert cfg["normalization_type"] == ("LNPre" if CHOICES[choice].fold_ln else "LN")
    log_probs = tl_forward(sd, cfg, tokens_for(SHAPES[name])).log_softmax(-1)
    torch.testing.assert_close(log_probs, hf_log_probs[name], atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", ["whole", "5 tokens"])
def test_processing_is_done_in_float32_and_cast_at_the_end(
    chunk: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = SHAPES["4 heads"]
    if chunk == "5 tokens":  # a vocabulary of 96: 19 chunks and a short one
        monkeypatch.setattr(arithmetic, "CHUNK_ELEMENTS", 5 * shape.d_model)
    folder = tmp_path / "fp16"
    write_checkpoint(folder, shape, layout="safetensors", dtype=torch.float16, seed=5)
    convert_folder(folder, tmp_path / "raw.safetensors", Processing(), dtype="float32")
    convert_folder(folder, tmp_path / "p32.safetensors", Processing.all(), dtype="float32")
    convert_folder(folder, tmp_path / "p16.safetensors", Processing.all())
    raw, _ = load_output(tmp_path / "raw.safetensors")
    p32, meta32 = load_output(tmp_path / "p32.safetensors")
    p16, meta16 = load_output(tmp_path / "p16.safetensors")
    assert (meta32["dtype"], meta16["dtype"]) == ("float32", "float16")
    in_float32 = reference_processing(raw, Processing.all(), shape.n_layers)
    in_float16 = reference_processing(
        {k: v.half() for k, v in raw.items()}, Processing.all(), shape.n_layers
    )
    worst_vs_16 = 0.0
    for key, tensor in p32.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, in_float32[key], atol=1e-6, rtol=0, msg=key)
        worst_vs_16 = max(worst_vs_16, (tensor - in_float16[key].float()).abs().max().item())
        # --dtype auto keeps float16: the same float32 result, cast once at the end.
        assert torch.equal(p16[key], tensor.half()), key
    # The float32 check above is sharp enough to tell float16 arithmetic apart.
    assert worst_vs_16 > 1e-4


@pytest.mark.parametrize(
    ("processing", "expected"),
    [
        (Processing(), []),
        (Processing(center_unembed=True, fold_ln=True), ["fold_ln", "center_unembed"]),
        (
            Processing(fold_value_biases=True, center_writing_weights=True),
            ["center_writing_weights", "fold_value_biases"],
        ),
        (Processing.all(), list(TL_ORDER)),
    ],
)
def test_metadata_records_the_steps_in_order(
    processing: Processing,
    expected: list[str],
    tiny_checkpoints: TinyCheckpoints,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.safetensors"
    convert_folder(tiny_checkpoints["safetensors"], out, processing)
    _, metadata = load_output(out)
    raw_out = tmp_path / "raw.safetensors"
    convert_folder(tiny_checkpoints["safetensors"], raw_out, Processing())
    _, raw_metadata = load_output(raw_out)
    assert json.loads(metadata["processing"]) == expected
    assert TL_ORDER == ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
    cfg, raw_cfg = json.loads(metadata["tl_config"]), json.loads(raw_metadata["tl_config"])
    assert cfg == raw_cfg | {"normalization_type": "LNPre" if processing.fold_ln else "LN"}


def test_parts_stream_one_at_a_time(tiny_checkpoints: TinyCheckpoints) -> None:
    """Nothing is read past the part being processed, and parts that no chosen step changes
    pass tensor by tensor, in their source dtype. Processed tensors are float32, except the
    embedding and unembedding weights, processed in chunks in the dtype they came in."""
    source = resolve_source(str(tiny_checkpoints["safetensors-sharded"]))
    plan = plan_conversion(source.checkpoint)
    for processing in (Processing.all(), Processing(center_unembed=True)):
        written = plan_processing(plan, processing)
        pulled = 0

        def counted(stream: Iterator[Converted]) -> Iterator[Converted]:
            nonlocal pulled
            for item in stream:
                pulled += 1
                yield item

        part_end: dict[str, int] = {}
        position: dict[str, int] = {}
        for group in written.groups:
            for planned in group.inputs:
                position[planned.key] = len(position) + 1
            part_end |= dict.fromkeys((t.key for t in group.outputs), len(position))
        keys = []
        with TensorReader(source.checkpoint) as reader:
            for planned, tensor in process_stream(written, counted(convert_tensors(plan, reader))):
                keys.append(planned.key)
                if planned.key in ("embed.W_E", "unembed.W_U"):
                    assert tensor.dtype == torch.float16
                    assert pulled <= part_end[planned.key], planned.key
                elif written.passes_for(planned.key):
                    assert tensor.dtype == torch.float32
                    assert pulled <= part_end[planned.key], planned.key
                elif planned.key.startswith("blocks."):
                    assert tensor.dtype == torch.float16
                    assert pulled == position[planned.key], planned.key
        assert keys == [t.key for t in written.tensors]


def test_a_stream_in_any_order_gives_the_same_tensors(tiny_checkpoints: TinyCheckpoints) -> None:
    """The Hub is streamed in the order its files store the tensors, not in plan order."""
    plan = plan_conversion(resolve_source(str(tiny_checkpoints["safetensors"])).checkpoint)
    written = plan_processing(plan, Processing.all())
    generator = torch.Generator().manual_seed(0)
    stream = [(t, torch.randn(t.shape, generator=generator)) for t in plan.tensors]

    def processed(items: list[Converted]) -> dict[str, torch.Tensor]:
        copies = [(t, tensor.clone()) for t, tensor in items]
        return {t.key: tensor for t, tensor in process_stream(written, copies)}

    in_order = processed(stream)
    shuffled = processed(stream[::-1])
    assert in_order.keys() == shuffled.keys() == {t.key for t in written.tensors}
    for key, tensor in in_order.items():
        assert torch.equal(tensor, shuffled[key]), key


def test_a_stream_with_a_tensor_missing_twice_or_unplanned_is_refused(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    plan = plan_conversion(resolve_source(str(tiny_checkpoints["safetensors"])).checkpoint)
    written = plan_processing(plan, Processing(fold_ln=True))
    stream = [(t, torch.zeros(t.shape)) for t in plan.tensors]
    with pytest.raises(PlanError, match=f"{stream[3][0].key} was planned but not converted"):
        list(process_stream(written, stream[:3] + stream[4:]))
    with pytest.raises(PlanError, match=f"{stream[3][0].key} was converted but not planned"):
        list(process_stream(written, [*stream[:4], stream[3], *stream[4:]]))


def without(plan: ConversionPlan, key: str) -> ConversionPlan:
    assert key in {t.key for t in plan.tensors}
    sources = tuple(
        dataclasses.replace(s, outputs=tuple(t for t in s.outputs if t.key != key))
        for s in plan.sources
    )
    return dataclasses.replace(plan, sources=tuple(s for s in sources if s.outputs))


@pytest.mark.parametrize(
    ("processing", "missing", "message"),
    [
        (
            Processing(fold_ln=True),
            "blocks.1.ln2.b",
            "fold_ln: the conversion has no blocks.1.ln2.b; folding LayerNorm needs",
        ),
        (
            Processing(center_writing_weights=True),
            "ln_final.w",
            "center_writing_weights: the conversion has no ln_final.w; centring the writing "
            "weights is exact only when LayerNorm reads the residual stream",
        ),
        (
            Processing(fold_value_biases=True),
            "blocks.0.attn.W_O",
            "fold_value_biases: the conversion has no blocks.0.attn.W_O",
        ),
        (
            Processing(center_unembed=True),
            "unembed.b_U",
            "center_unembed: the conversion has no unembed.b_U",
        ),
    ],
)
def test_a_pass_without_the_tensors_it_needs_is_refused_before_reading(
    processing: Processing, missing: str, message: str, tiny_checkpoints: TinyCheckpoints
) -> None:
    plan = without(
        plan_conversion(resolve_source(str(tiny_checkpoints["bin"])).checkpoint), missing
    )
    with pytest.raises(PlanError) as error:
        plan_processing(plan, processing)
    assert str(error.value).startswith(message)
    assert plan_processing(plan, Processing()).tensors == plan.tensors


def test_cli_flags_plan_and_inspect_agree(
    cli: Run, tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    folder = str(tiny_checkpoints["safetensors"])
    each = tmp_path / "each.safetensors"
    status, stdout, stderr = cli(
        [
            "convert",
            folder,
            "-o",
            str(each),
            "--json",
            "--fold-value-biases",
            "--fold-ln",
            "--center-unembed",
            "--center-writing-weights",
        ]
    )
    assert (status, stderr) == (0, ""), stderr
    assert json.loads(stdout)["processing"] == list(TL_ORDER)
    everything = tmp_path / "process.safetensors"
    assert cli(["convert", folder, "-o", str(everything), "--process", "-q"])[0] == 0
    assert everything.read_bytes() == each.read_bytes()

    status, stdout, _ = cli(["plan", folder, "--process", "--json"])
    planned = json.loads(stdout)
    status, stdout, _ = cli(["inspect", str(everything), "--json"])
    written = json.loads(stdout)
    assert {r["key"]: r["shape"] for r in planned["tensors"]} == {
        key: t["shape"] for key, t in written["tensors"].items()
    }
    assert planned["bytes"] == sum(2 * math.prod(t["shape"]) for t in written["tensors"].values())
    assert planned["processing"] == written["metadata"]["processing"] == list(TL_ORDER)
    assert planned["not_written"] == [
        f"blocks.{i}.{ln}.{p}" for i in range(2) for ln in ("ln1", "ln2") for p in "wb"
    ] + ["ln_final.w", "ln_final.b"]
    rows = {row["key"]: row["processing"] for row in planned["tensors"]}
    assert rows["blocks.1.attn.b_V"] == ["fold_ln", "fold_value_biases"]
    assert rows["blocks.1.mlp.W_out"] == ["center_writing_weights"]
    assert rows["blocks.1.attn.W_K"] == ["fold_ln"]
    assert rows["unembed.W_U"] == ["fold_ln", "center_unembed"]

    status, stdout, _ = cli(["plan", folder, "--fold-ln"])
    assert status == 0
    assert "processing: fold_ln" in stdout
    assert "not written: 10 LayerNorm tensors" in stdout
    status, stdout, _ = cli(["inspect", str(everything)])
    assert status == 0
    assert ", ".join(TL_ORDER) in stdout
    assert "normalization_type LNPre" in stdout
    raw = tmp_path / "raw.safetensors"
    assert cli(["convert", folder, "-o", str(raw), "-q"])[0] == 0
    status, stdout, _ = cli(["inspect", str(raw)])
    assert "none (raw weights)" in stdout
    assert "normalization_type LN " in stdout


def test_refactoring_the_factored_attention_is_refused(cli: Run, tmp_path: Path) -> None:
    status, stdout, stderr = cli(
        ["convert", "pythia-70m", "--process", "--refactor-factored-attn-matrices"]
    )
    assert (status, stdout) == (2, "")
    assert stderr.startswith("error: --refactor-factored-attn-matrices: refused; with rotary")
    assert len(stderr.strip().splitlines()) == 1


def test_the_console_entry_point_processes(
    run_cli: Callable[..., CliResult], tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    result = run_cli(["convert", tiny_checkpoints["bin-sharded"], "-o", out, "--process", "-q"])
    assert (result.returncode, result.stderr) == (0, "")
    sd, metadata = load_output(out)
    assert json.loads(metadata["processing"]) == list(TL_ORDER)
    assert len(sd) == 12 * tiny_checkpoints.shape.n_layers + 3
