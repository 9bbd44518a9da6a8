"""Wall time and peak memory of ``pythia-tl convert``, against ``cp`` and the transformers route.

    python benchmarks/run.py                      # 70m .. 2.8b, safetensors and .bin, 3 runs
    python benchmarks/run.py --sizes 70m,1.4b --runs 5 --formats bin
    python benchmarks/run.py --with-12b           # adds a pythia-12b-shaped sharded checkpoint
    python benchmarks/run.py --convert-args "--dtype-check"   # extra flags for every convert

For each Pythia size and weight format it writes (once; cached under ``benchmarks/.cache/``) a
random float16 checkpoint with the legacy buffers old transformers saved, then runs each command
below as its own process, interleaved run by run, with the source read into the page cache first:

* ``cp`` of the weight files: the floor for same-dtype conversion;
* the same copy followed by an fsync of the copies, as pythia-tl makes its output durable;
* hashlib's sha256 of the weight files, which every conversion computes (on its second core);
* ``dd`` writing as many bytes as the float32 output has: ``cp + dd`` is the float32 floor;
* ``pythia-tl convert --dtype auto`` and ``--dtype float32``, and with ``--process`` when the
  installed pythia-tl has it;
* with transformers and TransformerLens installed, ``GPTNeoXForCausalLM.from_pretrained``,
  TransformerLens' own ``convert_neox_weights`` and ``safetensors.torch.save_file``: the route
  users have without pythia-tl.

Each command is started by a small launcher process that reports the command's wall time, CPU
time and peak resident memory (``os.wait4``'s ``ru_maxrss``, which counts mapped file pages as
well as allocations). The launcher is needed because Linux carries a parent's resident size into
a forked child's ``ru_maxrss``. Before each command the script waits (up to ``--quiet-wait``
seconds) for the CPUs to be idle and notes when they were not. Every ratio compares medians
measured in the same invocation. The markdown table goes to ``benchmarks/RESULTS.md``
(``--output``) and to stdout, under the command that made it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
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
# The random Pythia-shaped checkpoints come from the tests' fixture module.
sys.path.insert(0, str(REPO / "tests"))
DEFAULT_CACHE = REPO / "benchmarks" / ".cache"
DEFAULT_OUTPUT = REPO / "benchmarks" / "RESULTS.md"
DEFAULT_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b")
FORMATS = ("safetensors", "bin")
MB = 2**20
RSS_MARGIN = 400 * MB
WALL_TARGET = 1.5
# Same-dtype conversion against a durable copy (cp + fsync), start-up included (issue #17).
DURABLE_TARGET = 2.0
PROCESS_TARGET = 2.0
# Above this share of RAM a source cannot stay in the page cache next to its output.
CACHEABLE_SHARE = 0.4
# The transformers route holds the model and a converted copy: about this many times the output.
HF_ROUTE_MEMORY_FACTOR = 2.5
SHA256_CODE = """
import hashlib, sys
for name in sys.argv[1:]:
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    with open(name, "rb", buffering=0) as file:
        while size := file.readinto(buffer):
            digest.update(memoryview(buffer)[:size])
"""
# The Hub's pythia-12b comes in three shards of about 8 GB.
LARGE_SHARD_BYTES = 8 * 2**30

# The launcher: forks the command from a small fresh process (so the command's ru_maxrss does not
# start at the benchmark's own size), waits for it and prints status, peak RSS (kB), CPU and wall
# seconds. The command's stdout is discarded; its stderr is the launcher's.
LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
cpu = usage.ru_utime + usage.ru_stime
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, cpu, seconds)
"""


@dataclass(frozen=True)
class Measurement:
    seconds: float
    cpu: float
    max_rss: int


@dataclass(frozen=True)
class Command:
    """One measured process and what it leaves behind (removed after each run)."""

    label: str
    argv: tuple[str, ...]
    leaves: Path


@dataclass(frozen=True)
class Source:
    """A cached synthetic checkpoint and what its conversion produces."""

    size: str
    layout: str
    folder: Path
    weight_files: tuple[Path, ...]
    weight_bytes: int
    output_bytes: dict[str, int]
    largest_output_tensor: dict[str, int]
    layer_float32_bytes: int

    @property
    def name(self) -> str:
        return f"pythia-{self.size}"


@dataclass
class Row:
    source: Source
    dtype: str
    medians: dict[str, Measurement] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclass
class Quiet:
    """How often the machine was busy when a command started."""

    limit: float
    busy: int = 0
    total: int = 0


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
        "--with-12b", action="store_true", help="add a pythia-12b-shaped checkpoint (24 GB)"
    )
    parser.add_argument(
        "--convert-args", default="", help="extra flags for every pythia-tl convert run"
    )
    parser.add_argument("--no-process", action="store_true", help="skip the --process runs")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers route")
    parser.add_argument(
        "--quiet-wait", type=float, default=20, help="seconds to wait for idle CPUs (0: never)"
    )
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
    """Run ``argv`` to completion through the launcher."""
    with log.open("wb") as err:
        done = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            env=child_env(),
            check=True,
        )
    status, max_rss_kb, cpu, seconds = done.stdout.split()
    if int(status) != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{shlex.join(argv)} exited {status}: {' | '.join(tail)}")
    return Measurement(float(seconds), float(cpu), int(max_rss_kb) * 1024)


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
    buffer = bytearray(16 * MB)
    for file in files:
        with file.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def cpu_idle_share(seconds: float = 0.5) -> float:
    """The share of CPU time spent idle over ``seconds`` (1.0 where /proc/stat is missing)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(quiet: Quiet) -> None:
    quiet.total += 1
    deadline = time.monotonic() + quiet.limit
    while cpu_idle_share() < 0.9:
        if time.monotonic() >= deadline:
            quiet.busy += 1
            return


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
    from synthetic import PYTHIA_SHAPES

    return PYTHIA_SHAPES[f"pythia-{size}"].n_params * 2


def ensure_checkpoint(folder: Path, size: str, layout: str) -> None:
    """Write the checkpoint (under a temporary name, renamed when complete) unless cached."""
    from synthetic import PYTHIA_SHAPES, write_checkpoint

    if folder.is_dir():
        return
    partial = folder.with_name(folder.name + ".partial")
    remove(partial)
    print(f"writing {folder.name} ...", file=sys.stderr, flush=True)
    write_checkpoint(
        partial,
        PYTHIA_SHAPES[f"pythia-{size}"],
        layout=layout,  # type: ignore[arg-type]
        legacy_buffers="always",
        shard_bytes=LARGE_SHARD_BYTES,
    )
    partial.rename(folder)


def describe_source(size: str, layout: str, folder: Path, dtypes: Sequence[str]) -> Source:
    from pythia_tl.mapping.plan import plan_conversion
    from pythia_tl.source.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(folder)
    plans = {dtype: plan_conversion(checkpoint, dtype) for dtype in dtypes}
    any_plan = next(iter(plans.values()))
    layer_elements = sum(
        t.nbytes // t.dtype.itemsize for t in any_plan.tensors if t.key.startswith("blocks.0.")
    )
    return Source(
        size=size,
        layout=layout,
        folder=folder,
        weight_files=checkpoint.files,
        weight_bytes=sum(f.stat().st_size for f in checkpoint.files),
        output_bytes={d: plan.nbytes for d, plan in plans.items()},
        largest_output_tensor={d: max(t.nbytes for t in plan.tensors) for d, plan in plans.items()},
        layer_float32_bytes=layer_elements * 4,
    )


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- the benchmark ---------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> int:
    sizes = [s.strip().removeprefix("pythia-") for s in args.sizes.split(",") if s.strip()]
    if args.with_12b and "12b" not in sizes:
        sizes.append("12b")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    extra = shlex.split(args.convert_args)
    has_hf = not args.no_hf and all(
        importlib.util.find_spec(name) is not None for name in ("transformers", "transformer_lens")
    )
    with_process = not args.no_process and "--process" not in extra
    with_process = with_process and convert_supports("--process")
    args.cache.mkdir(parents=True, exist_ok=True)
    quiet = Quiet(args.quiet_wait)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    baseline = measure_baseline(args.cache, args.runs)
    rows: list[Row] = []
    skipped: list[str] = []
    for size in sizes:
        for fmt, layout in layout_for(size):
            if fmt not in formats:
                continue
            if size == "12b" and fmt == "bin":
                skipped.append("pythia-12b .bin: only the sharded safetensors layout is measured")
                continue
            folder = args.cache / f"pythia-{size}-{layout}"
            needed = checkpoint_bytes(size) * 2 + 2 * 2**30  # the source and a same-dtype output
            if not folder.is_dir() and free_bytes(args.cache) < needed:
                skipped.append(
                    f"pythia-{size} {fmt}: needs {needed / 1e9:.0f} GB of free disk, "
                    f"{free_bytes(args.cache) / 1e9:.0f} GB available"
                )
                continue
            ensure_checkpoint(folder, size, layout)
            source = describe_source(size, layout, folder, dtypes)
            rows += bench_source(source, dtypes, extra, has_hf, with_process, args, quiet, skipped)
    report = render(
        rows, skipped, baseline, args, extra, has_hf, with_process, quiet, started, load_before
    )
    args.output.write_text(report)
    print(report)
    return 0


def measure_baseline(cache: Path, runs: int) -> Measurement:
    """Wall time and peak RSS of a Python that only imports torch and pythia-tl (the price of
    starting, paid by every conversion)."""
    code = "import torch, pythia_tl.cli, pythia_tl.engine.convert"
    return median(
        [measure([sys.executable, "-c", code], cache / "baseline.log") for _ in range(runs)]
    )


def bench_source(
    source: Source,
    dtypes: Sequence[str],
    extra: Sequence[str],
    has_hf: bool,
    with_process: bool,
    args: argparse.Namespace,
    quiet: Quiet,
    skipped: list[str],
) -> list[Row]:
    out = args.cache / "out"
    remove(out)
    out.mkdir()
    title = f"{source.name} {source.layout}"
    cacheable = source.weight_bytes < CACHEABLE_SHARE * ram_bytes()
    files = tuple(map(str, source.weight_files))
    commands = [Command("cp", ("cp", *files, str(out)), out)]
    # The same copy made durable, as pythia-tl makes its output before giving it its name.
    durable = 'cp -- "$@" "$0" && sync -- "$0"/*'
    commands.append(Command("cp + fsync", ("sh", "-c", durable, str(out), *files), out))
    # pythia-tl hashes every source file (recorded in the output, checked against the Hub), with
    # hashlib, which is several times as fast as coreutils' sha256sum on CPUs with SHA extensions.
    commands.append(Command("sha256", (sys.executable, "-c", SHA256_CODE, *files), out))
    rows = []
    for dtype in dtypes:
        output_bytes = source.output_bytes[dtype]
        if free_bytes(args.cache) < output_bytes + 2 * 2**30:
            skipped.append(f"{title} --dtype {dtype}: not enough free disk for its output")
            continue
        row = Row(source, dtype)
        rows.append(row)
        if not cacheable:
            row.notes.append("the source does not fit in the page cache: read from disk")
        commands += convert_commands(source, dtype, extra, with_process, out)
        if dtype not in ("auto", "float16"):  # the synthetic sources are float16
            target = out / f"dd-{dtype}"
            dd = ("dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={output_bytes}")
            commands.append(Command(f"dd {dtype}", (*dd, "iflag=count_bytes"), target))
        hf_memory = HF_ROUTE_MEMORY_FACTOR * output_bytes
        if has_hf and hf_memory > 0.8 * ram_bytes():
            row.notes.append(
                f"transformers route not run: it would need about {hf_memory / 2**30:.0f} GiB"
            )
        elif has_hf:
            target = out / f"hf-{dtype}.safetensors"
            hf = (sys.executable, str(Path(__file__).resolve()), "--hf-route")
            commands.append(
                Command(f"hf {dtype}", (*hf, str(source.folder), str(target), dtype), target)
            )
    samples: dict[str, list[Measurement]] = {c.label: [] for c in commands}
    for run in range(args.runs):
        for command in commands:
            if cacheable:
                warm(source.weight_files)
            wait_until_quiet(quiet)
            print(f"{title} run {run + 1}/{args.runs}: {command.label}", file=sys.stderr)
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


def convert_commands(
    source: Source, dtype: str, extra: Sequence[str], with_process: bool, out: Path
) -> list[Command]:
    commands = []
    for processed in (False, True) if with_process else (False,):
        label = f"convert {dtype}" + (" --process" if processed else "")
        target = out / f"{dtype}{'-processed' if processed else ''}.safetensors"
        argv = (*pythia_tl_argv(), "convert", str(source.folder), "-o", str(target))
        argv += ("--dtype", dtype, "--force", "--quiet", *extra)
        commands.append(Command(label, (*argv, "--process") if processed else argv, target))
    return commands


def median(values: Sequence[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(v.seconds for v in values),
        statistics.median(v.cpu for v in values),
        int(statistics.median(v.max_rss for v in values)),
    )


# --- the report ------------------------------------------------------------------------------


def render(
    rows: Sequence[Row],
    skipped: Sequence[str],
    baseline: Measurement,
    args: argparse.Namespace,
    extra: Sequence[str],
    has_hf: bool,
    with_process: bool,
    quiet: Quiet,
    started: str,
    load_before: float,
) -> str:
    import torch

    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    machine = (
        f"{os.cpu_count()} cores, {ram_bytes() / 2**30:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    busy = (
        f"The CPUs were busy with other work when {quiet.busy} of {quiet.total} commands started "
        f"(load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)."
    )
    lines = [
        "# pythia-tl benchmark",
        "",
        f"`{command}`",
        "",
        f"Started {started} on {machine}. Median of {args.runs} runs per command, the source in "
        f"the page cache. {busy} A Python that only imports torch and pythia-tl takes "
        f"{baseline.seconds:.2f} s and peaks at {baseline.max_rss / MB:.0f} MB.",
        "",
        "| model | format | weights | dtype | `cp` | floor | convert | x floor | sha256 "
        "| `cp` + fsync "
        "| x `cp` + fsync | CPU | peak RSS | RSS bound | `--process` | x convert | its peak RSS "
        "| transformers route | x `cp` | its peak RSS |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [render_row(row) for row in rows]
    lines += [
        "",
        "floor: `cp` of the weight files for `--dtype auto`; for `float32`, `cp` plus `dd` "
        "writing the output's bytes. sha256: hashing the weight files with Python's hashlib, as "
        "every conversion does (on its second core). `cp` + fsync: the same copy, then fsync of "
        "the copies, as "
        "pythia-tl fsyncs its output before naming it; x `cp` + fsync: the conversion's wall time "
        "over it, start-up included, for `--dtype auto` (target <= 2). "
        "CPU: user + system seconds of the conversion. RSS bound: "
        "2 x the largest output tensor + 400 MB (with `--process`, plus one layer in float32). "
        "Marks: wall <= 1.5 x floor, <= 2 x `cp` + fsync (<= 2 x the conversion with "
        "`--process`), peak RSS <= bound.",
    ]
    if extra:
        lines.append(f"Every convert ran with `{shlex.join(extra)}`.")
    if not with_process:
        lines.append("`--process` was not measured (absent from this pythia-tl, or --no-process).")
    if not has_hf:
        lines.append("The transformers route was not measured (not installed, or --no-hf).")
    notes = [f"- {s}" for s in skipped]
    for row in rows:
        where = f"{row.source.name} {row.source.layout} {row.dtype}"
        notes += [f"- {where}: {note}" for note in row.notes]
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
        source.name,
        source.layout,
        f"{source.weight_bytes / 1e9:.2f} GB",
        dtype,
        f"{cp:.2f} s",
        f"{floor:.2f} s",
        f"{convert.seconds:.2f} s",
        f"{ratio:.2f} {mark(ratio <= WALL_TARGET)}",
        f"{m['sha256'].seconds:.2f} s" if "sha256" in m else "-",
        f"{m['cp + fsync'].seconds:.2f} s" if "cp + fsync" in m else "-",
        durable_cell(convert, m, dtype),
        f"{convert.cpu:.1f} s",
        f"{convert.max_rss / MB:.0f} MB {mark(convert.max_rss <= bound)}",
        f"{bound / MB:.0f} MB",
    ]
    processed = m.get(f"convert {dtype} --process")
    if processed is None:
        cells += ["-", "-", "-"]
    else:
        slower = processed.seconds / convert.seconds
        process_bound = bound + source.layer_float32_bytes
        cells += [
            f"{processed.seconds:.2f} s",
            f"{slower:.2f} {mark(slower <= PROCESS_TARGET)}",
            f"{processed.max_rss / MB:.0f} MB {mark(processed.max_rss <= process_bound)}",
        ]
    hf = m.get(f"hf {dtype}")
    if hf is None:
        cells += ["-", "-", "-"]
    else:
        cells += [f"{hf.seconds:.2f} s", f"{hf.seconds / cp:.1f}", f"{hf.max_rss / MB:.0f} MB"]
    return "| " + " | ".join(cells) + " |"


def durable_cell(convert: Measurement, m: dict[str, Measurement], dtype: str) -> str:
    """Same-dtype conversion against ``cp`` + fsync of the same files, marked against 2.0."""
    if "cp + fsync" not in m or dtype != "auto":
        return "-"
    ratio = convert.seconds / m["cp + fsync"].seconds
    return f"{ratio:.2f} {mark(ratio <= DURABLE_TARGET)}"


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


# --- the transformers + TransformerLens route (run in its own process) ------------------


def run_hf_route(folder: Path, output: Path, dtype: str) -> None:
    """What a user does without pythia-tl: load the model with transformers, convert it with
    TransformerLens' own ``convert_neox_weights`` and save the state dict with safetensors."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    torch_dtype = torch.float16 if dtype == "auto" else getattr(torch, dtype)
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = transformers.GPTNeoXForCausalLM.from_pretrained(folder, **{dtype_arg: torch_dtype})
    cfg = loading.get_pretrained_model_config(str(folder), device="cpu", dtype=torch_dtype)
    with torch.no_grad():
        state = convert_neox_weights(model, cfg)
        # save_file refuses views that are not contiguous or that share storage.
        save_file({k: v.contiguous() for k, v in state.items()}, str(output))


if __name__ == "__main__":
    sys.exit(main())
