"""Streaming from the Hub: pythia-tl's streamed conversion against a plain download of the same
files, over the same rate-limited link, in one run.

    python benchmarks/remote.py                         # pythia-1.4b, at 250 MB/s and 1 GB/s
    python benchmarks/remote.py --sizes 1.4b,12b --output benchmarks/RESULTS-remote.md

The tests' stand-in Hub (``tests/hub_server.py``) serves a random Pythia-shaped checkpoint from
``benchmarks/.cache/`` on 127.0.0.1, its weight files redirected to a second host name, through a
token bucket of the given rate shared by all connections. For each size and rate it measures,
each as its own process started by ``run.py``'s launcher:

* ``hf_hub_download`` of the weight files into an empty cache: the plain download;
* ``pythia-tl convert`` of the revision, streamed (nothing cached before);
* ``pythia-tl plan`` and ``pythia-tl convert --tensors embed.W_E``: the bytes the Hub served.

Peak RSS comes from the launcher; peak disk is the most space the conversion's files took at once
(its output and its huggingface_hub home), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import run  # noqa: E402 (the launcher, the checkpoint cache)
from hub_server import StandInHub  # noqa: E402

MB = 1e6
DOWNLOAD_CODE = """
import sys
from huggingface_hub import hf_hub_download
for name in sys.argv[2:]:
    hf_hub_download(sys.argv[1], name)
"""


class DiskPeak:
    """The most bytes the files under ``path`` took at once while the block ran (sampled)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> DiskPeak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _used(self.path))


def _used(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue  # removed while walking
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1.4b")
    parser.add_argument("--rates", default="250e6,1e9", help="link rates in bytes per second")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS-remote.md")
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        layout = "safetensors-sharded" if size in ("6.9b", "12b") else "safetensors"
        folder = run.DEFAULT_CACHE / f"pythia-{size}-{layout}"
        run.ensure_checkpoint(folder, size, layout)
        weights = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
        weight_bytes = sum((folder / name).stat().st_size for name in weights)
        for rate in (float(r) for r in args.rates.split(",")):
            rows.append(bench(size, folder, weights, weight_bytes, rate))
            print(rows[-1], file=sys.stderr, flush=True)
    table = render(rows)
    command = "python benchmarks/remote.py " + " ".join(sys.argv[1:])
    text = f"```\n{command}\n```\n\n{table}\n"
    args.output.write_text(text)
    print(text)
    return 0


def bench(size: str, folder: Path, weights: list[str], weight_bytes: int, rate: float) -> dict:
    repo_id = f"EleutherAI/pythia-{size}"
    with (
        StandInHub(bytes_per_second=rate) as hub,
        tempfile.TemporaryDirectory(dir=run.DEFAULT_CACHE) as scratch,
    ):
        hub.add_revision(repo_id, "main", folder)
        work = Path(scratch)
        env_base = {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

        def measured(argv: list[str], home: Path) -> run.Measurement:
            env = {**os.environ, **env_base, "HF_HOME": str(home)}
            env.pop("HF_HUB_OFFLINE", None)
            return measure(argv, work / "log.txt", env)

        download = measured(
            [sys.executable, "-c", DOWNLOAD_CODE, repo_id, *weights], work / "download-home"
        )
        run.remove(work / "download-home")
        out = work / "out.safetensors"
        hub.clear_requests()
        with DiskPeak(work) as disk:
            streamed = measured(
                [*run.pythia_tl_argv(), "convert", repo_id, "-o", str(out)], work / "home"
            )
        streamed_fetched = hub.served_bytes()
        largest = max_tensor_bytes(out)
        output_bytes = out.stat().st_size
        cached = sum(p.stat().st_size for p in (work / "home").rglob("*") if p.is_file())
        run.remove(out)
        hub.clear_requests()
        measured([*run.pythia_tl_argv(), "plan", repo_id, "--json"], work / "home2")
        plan_fetched = hub.served_bytes()
        hub.clear_requests()
        measured(
            [*run.pythia_tl_argv(), "convert", repo_id, "--tensors", "embed.W_E", "-o", str(out)],
            work / "home3",
        )
        embed_fetched = hub.served_bytes()
        embed_bytes = max_tensor_bytes(out)
    return {
        "size": size,
        "rate": rate,
        "weight_bytes": weight_bytes,
        "download_s": download.seconds,
        "download_cpu": download.cpu,
        "streamed_s": streamed.seconds,
        "streamed_cpu": streamed.cpu,
        "streamed_fetched": streamed_fetched,
        "rss": streamed.max_rss,
        "rss_bound": 2 * largest + 400 * 2**20,
        "disk_peak": disk.peak,
        "output_bytes": output_bytes,
        "cached_bytes": cached,
        "plan_fetched": plan_fetched,
        "embed_fetched": embed_fetched,
        "embed_bytes": embed_bytes,
    }


def measure(argv: list[str], log: Path, env: dict[str, str]) -> run.Measurement:
    """``run.measure`` with the Hub online (its own environment is offline)."""
    with log.open("wb") as err:
        done = subprocess.run(
            [sys.executable, "-S", "-c", run.LAUNCHER, *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            check=True,
        )
    status, max_rss_kb, cpu, seconds = done.stdout.split()
    if int(status) != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[:3]} exited {status.decode()}: {' | '.join(tail)}")
    return run.Measurement(float(seconds), float(cpu), int(max_rss_kb) * 1024)


def max_tensor_bytes(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        sizes = []
        for name in handle.keys():  # noqa: SIM118
            piece = handle.get_slice(name)
            count = 1
            for dim in piece.get_shape():
                count *= dim
            sizes.append(count * (4 if piece.get_dtype() == "F32" else 2))
    return max(sizes)


def render(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | link | `hf_hub_download` (CPU) | streamed convert (CPU) | ratio (target "
        "<= 1.1) | peak RSS (bound) | peak disk (output) | cache after | `plan` fetched | "
        "`--tensors embed.W_E` fetched (W_E) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["streamed_s"] / r["download_s"]
        lines.append(
            f"| pythia-{r['size']} ({r['weight_bytes'] / 1e9:.2f} GB) | {r['rate'] / MB:.0f} MB/s "
            f"| {r['download_s']:.1f} s ({r['download_cpu']:.1f} s) "
            f"| {r['streamed_s']:.1f} s ({r['streamed_cpu']:.1f} s) | {ratio:.2f} "
            f"{'✓' if ratio <= 1.1 else '✗'} | {r['rss'] / 2**20:.0f} MB "
            f"({r['rss_bound'] / 2**20:.0f}) {'✓' if r['rss'] <= r['rss_bound'] else '✗'} "
            f"| {r['disk_peak'] / 1e9:.2f} GB ({r['output_bytes'] / 1e9:.2f}) "
            f"| {r['cached_bytes'] / 1e3:.0f} kB | {r['plan_fetched'] / 1e3:.0f} kB "
            f"| {r['embed_fetched'] / MB:.1f} MB ({r['embed_bytes'] / MB:.1f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
