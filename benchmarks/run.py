"""Wall time and peak memory of ``pythia-tl convert``, against ``cp`` and the transformers route.

    python benchmarks/run.py                      # 70m .. 2.8b, safetensors and .bin, 3 runs
    python benchmarks/run.py --sizes 70m,1.4b --runs 5 --formats bin
    python benchmarks/run.py --with-12b           # adds a pythia-12b-shaped sharded checkpoint
    python benchmarks/run.py --convert-args "--process"

For each Pythia size and weight format it writes (once; cached under ``benchmarks/.cache/``) a
random float16 checkpoint with the legacy buffers old transformers saved, then runs each command
below as its own process, interleaved run by run, with the source read into the page cache first:

* ``cp`` of the weight files: the floor for same-dtype conversion;
* ``dd`` writing as many bytes as the float32 output has: ``cp + dd`` is the float32 floor;
* ``pythia-tl convert --dtype auto`` and ``--dtype float32``;
* with transformers installed, ``GPTNeoXForCausalLM.from_pretrained`` followed by a
  TransformerLens-style conversion of its state dict and ``safetensors.torch.save_file``: the route
  users have without pythia-tl.

Wall time is measured around each process and peak resident memory comes from the kernel
(``os.wait4``'s ``ru_maxrss``, which counts mapped file pages as well as allocations). Every ratio
compares medians measured in the same invocation, because these machines are noisy. The markdown
table goes to ``benchmarks/RESULTS.md`` (``--output``) and to stdout, under its command.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "benchmarks" / ".cache"
DEFAULT_OUTPUT = REPO / "benchmarks" / "RESULTS.md"
DEFAULT_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b")
FORMATS = ("safetensors", "bin")
RSS_MARGIN = 400 * 2**20
WALL_TARGET = 1.5
# Above this share of RAM a source cannot stay in the page cache next to its output.
CACHEABLE_SHARE = 0.4
# The transformers route holds the model and a converted copy: about this many times the output.
HF_ROUTE_MEMORY_FACTOR = 2.5


@dataclass(frozen=True)
class Measurement:
    seconds: float
    max_rss: int


@dataclass(frozen=True)
class Command:
    """One measured process: what it runs and what it leaves behind (removed after each run)."""

    label: str
    argv: tuple[str, ...]
    leaves: Path


@dataclass(frozen=True)
class Source:
    """A cached synthetic checkpoint and what its conversion will produce."""

    size: str
    layout: str
    folder: Path
    weight_files: tuple[Path, ...]
    weight_bytes: int
    output_bytes: dict[str, int]
    largest_output_tensor: dict[str, int]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hf_route:
        folder, output, dtype = args.hf_route
        run_hf_route(Path(folder), Path(output), dtype)
        return 0
    return run_benchmark(args)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="comma-separated")
    parser.add_argument("--formats", default=",".join(FORMATS), help="safetensors,bin")
    parser.add_argument("--dtypes", default="auto,float32", help="output dtypes to convert to")
    parser.add_argument("--runs", type=int, default=3, help="runs per command (median taken)")
    parser.add_argument(
        "--with-12b", action="store_true", help="add a pythia-12b-shaped checkpoint"
    )
    parser.add_argument(
        "--convert-args", default="", help="extra flags for every pythia-tl convert run"
    )
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers route")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--hf-route", nargs=3, metavar=("FOLDER", "OUT", "DTYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


# --- the measured processes ------------------------------------------------------------------


def measure(argv: Sequence[str], log: Path) -> Measurement:
    """Run ``argv`` to completion; its wall time and peak RSS (of that process alone)."""
    with log.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=child_env())
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{shlex.join(argv)} exited {process.returncode}: {' | '.join(tail)}")
    return Measurement(seconds, usage.ru_maxrss * 1024)  # Linux reports kilobytes


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    return env


def pythia_tl_argv() -> list[str]:
    """The console script users run, or the module when it is not installed beside Python."""
    script = Path(sys.executable).parent / "pythia-tl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pythia_tl"]


def convert_supports(flag: str) -> bool:
    help_text = subprocess.run(
        [*pythia_tl_argv(), "convert", "--help"], capture_output=True, text=True, env=child_env()
    ).stdout
    return flag in help_text


def warm(files: Sequence[Path]) -> None:
    """Read ``files`` once so that the measured process finds them in the page cache."""
    buffer = bytearray(16 << 20)
    for file in files:
        with file.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- synthetic checkpoints -------------------------------------------------------------------


def layout_for(size: str) -> list[tuple[str, str]]:
    """(format, synthetic layout) pairs: single files up to 2.8b, shards above, as on the Hub."""
    if size in ("6.9b", "12b"):
        return [("safetensors", "safetensors-sharded"), ("bin", "bin-sharded")]
    return [("safetensors", "safetensors"), ("bin", "bin")]


def checkpoint_bytes(size: str) -> int:
    from pythia_tl.synthetic import PYTHIA_SHAPES

    return PYTHIA_SHAPES[f"pythia-{size}"].n_params * 2


def ensure_checkpoint(cache: Path, size: str, layout: str) -> Path:
    """The cached checkpoint, written first (under a temporary name) when missing."""
    from pythia_tl.synthetic import PYTHIA_SHAPES, write_checkpoint

    folder = cache / f"pythia-{size}-{layout}"
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    remove(partial)
    print(f"writing {folder.name} ...", file=sys.stderr, flush=True)
    write_checkpoint(
        partial, PYTHIA_SHAPES[f"pythia-{size}"], layout=layout, legacy_buffers="always"
    )  # type: ignore[arg-type]
    partial.rename(folder)
    return folder


def describe_source(size: str, layout: str, folder: Path, dtypes: Sequence[str]) -> Source:
    from pythia_tl.plan import build_plan
    from pythia_tl.source.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(folder)
    plans = {dtype: build_plan(checkpoint, dtype) for dtype in dtypes}
    return Source(
        size=size,
        layout=layout,
        folder=folder,
        weight_files=checkpoint.files,
        weight_bytes=sum(f.stat().st_size for f in checkpoint.files),
        output_bytes={d: plan.nbytes for d, plan in plans.items()},
        largest_output_tensor={d: max(t.nbytes for t in plan.tensors) for d, plan in plans.items()},
    )


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Row:
    source: Source
    dtype: str
    medians: dict[str, Measurement] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def run_benchmark(args: argparse.Namespace) -> int:
    sizes = [s.strip().removeprefix("pythia-") for s in args.sizes.split(",") if s.strip()]
    if args.with_12b and "12b" not in sizes:
        sizes.append("12b")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    extra = shlex.split(args.convert_args)
    has_hf = not args.no_hf and _importable("transformers")
    with_process = "--process" not in extra and convert_supports("--process")
    args.cache.mkdir(parents=True, exist_ok=True)
    baseline = measure_baseline(args.cache)
    rows: list[Row] = []
    skipped: list[str] = []
    for size in sizes:
        for fmt, layout in layout_for(size):
            if fmt not in formats:
                continue
            if size == "12b" and fmt == "bin":
                skipped.append("pythia-12b .bin: only the sharded safetensors layout is measured")
                continue
            needed = checkpoint_bytes(size) * 2 + (2 << 30)  # source + same-dtype output
            folder = args.cache / f"pythia-{size}-{layout}"
            if not folder.is_dir() and free_bytes(args.cache) < needed:
                skipped.append(
                    f"pythia-{size} {fmt}: needs {needed / 1e9:.0f} GB free, "
                    f"{free_bytes(args.cache) / 1e9:.0f} GB available"
                )
                continue
            ensure_checkpoint(args.cache, size, layout)
            source = describe_source(size, layout, folder, dtypes)
            rows += bench_source(source, dtypes, extra, has_hf, with_process, args, skipped)
    report = render(rows, skipped, baseline, args, extra, has_hf, with_process)
    args.output.write_text(report)
    print(report)
    return 0


def measure_baseline(cache: Path) -> int:
    """Peak RSS of a Python that only imports torch and pythia-tl (the price of starting)."""
    code = "import torch, pythia_tl.cli, pythia_tl.convert"
    return measure([sys.executable, "-c", code], cache / "baseline.log").max_rss


def bench_source(
    source: Source,
    dtypes: Sequence[str],
    extra: Sequence[str],
    has_hf: bool,
    with_process: bool,
    args: argparse.Namespace,
    skipped: list[str],
) -> list[Row]:
    out = args.cache / "out"
    remove(out)
    out.mkdir()
    name = f"pythia-{source.size} {source.layout}"
    cacheable = source.weight_bytes < CACHEABLE_SHARE * ram_bytes()
    commands = [Command("cp", ("cp", *map(str, source.weight_files), str(out)), out)]
    rows = []
    for dtype in dtypes:
        output_bytes = source.output_bytes[dtype]
        if free_bytes(args.cache) < output_bytes + (2 << 30):
            skipped.append(f"{name} --dtype {dtype}: not enough disk for its output")
            continue
        row = Row(source, dtype)
        if not cacheable:
            row.notes.append("source larger than the page cache can hold: read from disk")
        rows.append(row)
        target = out / f"{dtype}.safetensors"
        convert = (*pythia_tl_argv(), "convert", str(source.folder), "-o", str(target))
        convert += ("--dtype", dtype, "--force", "--quiet", *extra)
        commands.append(Command(f"convert {dtype}", convert, target))
        if with_process:
            processed = out / f"{dtype}-processed.safetensors"
            argv = (*convert[:3], "-o", str(processed), *convert[5:], "--process")
            commands.append(Command(f"convert {dtype} --process", argv, processed))
        if dtype not in ("auto", "float16"):  # the synthetic sources are float16
            dd_target = out / f"dd-{dtype}"
            dd = ("dd", "if=/dev/zero", f"of={dd_target}", "bs=16M", f"count={output_bytes}")
            dd += ("iflag=count_bytes", "status=none")
            commands.append(Command(f"dd {dtype}", dd, dd_target))
        hf_memory = HF_ROUTE_MEMORY_FACTOR * output_bytes
        if not has_hf:
            continue
        if hf_memory > 0.8 * ram_bytes():
            row.notes.append(
                f"transformers route skipped: it would need about {hf_memory / 2**30:.0f} GiB"
            )
        else:
            hf_target = out / f"hf-{dtype}.safetensors"
            hf = (sys.executable, str(Path(__file__).resolve()), "--hf-route")
            commands.append(
                Command(f"hf {dtype}", (*hf, str(source.folder), str(hf_target), dtype), hf_target)
            )
    samples: dict[str, list[Measurement]] = {c.label: [] for c in commands}
    for run in range(args.runs):
        for command in commands:
            if cacheable:
                warm(source.weight_files)
            print(f"{name} run {run + 1}/{args.runs}: {command.label}", file=sys.stderr, flush=True)
            samples[command.label].append(measure(command.argv, args.cache / "last.log"))
            remove(command.leaves)
            if command.leaves == out:
                out.mkdir()
            os.sync()
    medians = {label: median(values) for label, values in samples.items()}
    for row in rows:
        row.medians = medians
    remove(out)
    return rows


def median(values: Sequence[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(v.seconds for v in values), statistics.median(v.max_rss for v in values)
    )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- the report ------------------------------------------------------------------------------


def render(
    rows: Sequence[Row],
    skipped: Sequence[str],
    baseline: int,
    args: argparse.Namespace,
    extra: Sequence[str],
    has_hf: bool,
    with_process: bool,
) -> str:
    import torch

    command = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:])])
    lines = [
        "# pythia-tl benchmark",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, "
        f"{ram_bytes() / 2**30:.0f} GiB RAM, Linux {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}. Median of {args.runs} runs; "
        "the source in the page cache. A Python that only imports torch and pythia-tl peaks at "
        f"{baseline / 2**20:.0f} MB.",
        "",
        "| model | format | weights | dtype | `cp` | floor | convert | x floor "
        "| peak RSS | RSS bound | transformers route | x `cp` | its peak RSS |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(render_row(row))
    lines += [
        "",
        "floor: `cp` of the weight files for `--dtype auto`; for `float32`, `cp` plus `dd` "
        "writing the output's bytes. RSS bound: 2 x the largest output tensor + 400 MB. "
        "✓/✗: wall ≤ 1.5 x floor, peak RSS ≤ bound.",
    ]
    if extra:
        lines.append(f"Every convert ran with `{shlex.join(extra)}`.")
    if not with_process and "--process" not in extra:
        lines.append("`pythia-tl convert` has no `--process` flag here: processing is not timed.")
    if not has_hf:
        lines.append("transformers is not installed (or --no-hf): its route is not measured.")
    notes = [f"- {s}" for s in skipped]
    for row in rows:
        notes += [
            f"- pythia-{row.source.size} {row.source.layout} {row.dtype}: {n}" for n in row.notes
        ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def render_row(row: Row) -> str:
    m, source, dtype = row.medians, row.source, row.dtype
    cp = m["cp"].seconds
    floor = cp + (m[f"dd {dtype}"].seconds if f"dd {dtype}" in m else 0.0)
    convert = m[f"convert {dtype}"]
    bound = 2 * source.largest_output_tensor[dtype] + RSS_MARGIN
    ratio = convert.seconds / floor
    cells = [
        f"pythia-{source.size}",
        source.layout,
        f"{source.weight_bytes / 1e9:.2f} GB",
        dtype,
        f"{cp:.2f} s",
        f"{floor:.2f} s",
        f"{convert.seconds:.2f} s",
        f"{ratio:.2f} {'✓' if ratio <= WALL_TARGET else '✗'}",
        f"{convert.max_rss / 2**20:.0f} MB {'✓' if convert.max_rss <= bound else '✗'}",
        f"{bound / 2**20:.0f} MB",
    ]
    processed = m.get(f"convert {dtype} --process")
    if processed is not None:
        cells[6] += (
            f" ({processed.seconds:.2f} s, {processed.max_rss / 2**20:.0f} MB with --process)"
        )
    hf = m.get(f"hf {dtype}")
    if hf is None:
        cells += ["-", "-", "-"]
    else:
        cells += [f"{hf.seconds:.2f} s", f"{hf.seconds / cp:.1f}", f"{hf.max_rss / 2**30:.1f} GB"]
    return "| " + " | ".join(cells) + " |"


# --- the transformers + TransformerLens-style route (run in its own process) ------------------


def run_hf_route(folder: Path, output: Path, dtype: str) -> None:
    """What a user does without pythia-tl: load the model with transformers, rearrange its state
    dict into TransformerLens' layout (the same einops patterns TransformerLens applies to
    GPT-NeoX) and save it with safetensors."""
    import einops
    import torch
    import transformers
    from safetensors.torch import save_file

    torch_dtype = torch.float16 if dtype == "auto" else getattr(torch, dtype)
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = transformers.GPTNeoXForCausalLM.from_pretrained(folder, **{dtype_arg: torch_dtype})
    config = model.config
    n_heads = config.num_attention_heads
    hf = model.state_dict()
    head = hf["embed_out.weight"] if "embed_out.weight" in hf else hf["lm_head.weight"]
    tl: dict[str, torch.Tensor] = {"embed.W_E": hf["gpt_neox.embed_in.weight"]}
    for layer in range(config.num_hidden_layers):
        p, b = f"gpt_neox.layers.{layer}.", f"blocks.{layer}."
        qkv = einops.rearrange(
            hf[p + "attention.query_key_value.weight"],
            "(head part d_head) d_model -> part head d_model d_head",
            head=n_heads,
            part=3,
        )
        qkv_bias = einops.rearrange(
            hf[p + "attention.query_key_value.bias"],
            "(head part d_head) -> part head d_head",
            head=n_heads,
            part=3,
        )
        for index, part in enumerate("QKV"):
            tl[b + f"attn.W_{part}"] = qkv[index]
            tl[b + f"attn.b_{part}"] = qkv_bias[index]
        tl[b + "attn.W_O"] = einops.rearrange(
            hf[p + "attention.dense.weight"],
            "d_model (head d_head) -> head d_head d_model",
            head=n_heads,
        )
        tl[b + "attn.b_O"] = hf[p + "attention.dense.bias"]
        tl[b + "ln1.w"] = hf[p + "input_layernorm.weight"]
        tl[b + "ln1.b"] = hf[p + "input_layernorm.bias"]
        tl[b + "ln2.w"] = hf[p + "post_attention_layernorm.weight"]
        tl[b + "ln2.b"] = hf[p + "post_attention_layernorm.bias"]
        tl[b + "mlp.W_in"] = hf[p + "mlp.dense_h_to_4h.weight"].T
        tl[b + "mlp.b_in"] = hf[p + "mlp.dense_h_to_4h.bias"]
        tl[b + "mlp.W_out"] = hf[p + "mlp.dense_4h_to_h.weight"].T
        tl[b + "mlp.b_out"] = hf[p + "mlp.dense_4h_to_h.bias"]
    tl["ln_final.w"] = hf["gpt_neox.final_layer_norm.weight"]
    tl["ln_final.b"] = hf["gpt_neox.final_layer_norm.bias"]
    tl["unembed.W_U"] = head.T
    tl["unembed.b_U"] = torch.zeros(head.shape[0], dtype=head.dtype)
    # save_file refuses views that are not contiguous or that share storage.
    save_file({k: v.contiguous() for k, v in tl.items()}, str(output))


if __name__ == "__main__":
    sys.exit(main())
