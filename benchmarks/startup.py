"""Start-up of the commands that convert nothing, against Python alone and Python importing torch.

    python benchmarks/startup.py              # 10 runs per command
    python benchmarks/startup.py --runs 20

``plan`` is measured on a pythia-12b-shaped checkpoint (three safetensors shards, as on the Hub)
whose headers are real and whose data is a hole in a sparse file: planning reads headers only, so
the 23.8 GB it declares take no disk. ``inspect`` reads a pythia-tl file converted from a tiny
checkpoint. Every command runs as its own process through ``run.py``'s launcher, interleaved run
by run, offline; the table (medians) goes to ``benchmarks/RESULTS-startup.md`` and to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import run  # noqa: E402 (the launcher)
from synthetic import PYTHIA_SHAPES, write_checkpoint  # noqa: E402

from pythia_tl.dtypes import BY_NAME  # noqa: E402
from pythia_tl.formats.safetensors import LENGTH_BYTES, TensorEntry, encode_header  # noqa: E402
from pythia_tl.mapping.plan import expected_plan  # noqa: E402
from pythia_tl.source.config import read_config  # noqa: E402

SHARDS = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS-startup.md")
    args = parser.parse_args()
    cli = run.pythia_tl_argv()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        twelve_b = header_only_checkpoint(work / "pythia-12b")
        converted = convert_tiny(cli, work)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "pythia-tl --version": [*cli, "--version"],
            "pythia-tl --help": [*cli, "--help"],
            "pythia-tl checkpoints pythia-70m": [*cli, "checkpoints", "pythia-70m"],
            "pythia-tl inspect FILE": [*cli, "inspect", str(converted)],
            "pythia-tl plan 12b-FOLDER": [*cli, "plan", str(twelve_b)],
            "pythia-tl plan 12b-FOLDER --process --json": [
                *cli, "plan", str(twelve_b), "--process", "--json"
            ],
        }  # fmt: skip
        samples: dict[str, list[run.Measurement]] = {label: [] for label in commands}
        for _ in range(args.runs):
            for label, argv in commands.items():
                samples[label].append(run.measure(argv, work / "startup.log"))
    medians = {label: run.median(values) for label, values in samples.items()}
    text = report(medians, args.runs)
    args.output.write_text(text)
    print(text)
    return 0


def header_only_checkpoint(folder: Path) -> Path:
    """pythia-12b's config and shard headers, its tensor data a hole in each sparse file."""
    folder.mkdir()
    shape = PYTHIA_SHAPES["pythia-12b"]
    (folder / "config.json").write_text(json.dumps(shape.to_hf_config()))
    float16 = BY_NAME["float16"]
    plan = expected_plan(read_config(folder / "config.json"), float16)
    dims = plan.config.dims()
    entries = [
        TensorEntry(source.rule.source, float16, source.rule.source_shape(dims))
        for source in plan.sources
        if source.rule.source is not None
    ]
    per_shard = -(-len(entries) // SHARDS)
    weight_map = {}
    for k in range(SHARDS):
        name = f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        shard = entries[k * per_shard : (k + 1) * per_shard]
        header = encode_header(shard, {"format": "pt"})
        with (folder / name).open("wb") as file:
            file.write(len(header).to_bytes(LENGTH_BYTES, "little") + header)
            file.truncate(LENGTH_BYTES + len(header) + sum(entry.nbytes for entry in shard))
        weight_map.update(dict.fromkeys((entry.name for entry in shard), name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def convert_tiny(cli: list[str], work: Path) -> Path:
    source, out = work / "tiny", work / "tiny.safetensors"
    write_checkpoint(source, PYTHIA_SHAPES["pythia-14m"], layout="safetensors")
    subprocess.run([*cli, "convert", str(source), "-o", str(out), "--quiet"], check=True)
    return out


def report(medians: dict[str, run.Measurement], runs: int) -> str:
    torch_import = medians["python -c 'import torch'"].seconds
    lines = [
        "```",
        "python benchmarks/startup.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Median of {runs} runs per command, each its own process.",
        "",
        "| command | wall (s) | CPU (s) | peak RSS (MB) | wall / `import torch` |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, m in medians.items():
        lines.append(
            f"| `{label}` | {m.seconds:.2f} | {m.cpu:.2f} | {m.max_rss / 2**20:.0f} "
            f"| {m.seconds / torch_import:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
