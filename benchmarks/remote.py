"""Streaming from the Hub, measured as a cost on one core: pythia-tl's streamed conversion against
``hf_hub_download`` of the same files and a lean floor loop, over the same link, in one run.

    python benchmarks/remote.py                                # pythia-1.4b: unthrottled, 250 MB/s
    python benchmarks/remote.py --runs 3                       # the median of 3 runs of each
    python benchmarks/remote.py --sizes 12b --rates 0 --output benchmarks/RESULTS-remote-12b.md

The tests' stand-in Hub (``tests/hub_server.py``) serves a random Pythia-shaped checkpoint from
``benchmarks/.cache/`` with the real Hub's manners (weight files redirected to a second host
name with Xet headers, a latency before every answer and before the first byte of every storage
response). This process, and so the stand-in, runs on core 0; every client runs on core 1
(``os.sched_setaffinity``), so a client's wall time is what one core achieves with the server's
work off it, and its CPU time is its own. Each client is its own process, started by
``run.py``'s launcher (peak RSS, user + system CPU, wall time):

* ``hf_hub_download`` of the weight files into an empty cache (the plain download);
* the same, each file then fsynced (the download made as durable as pythia-tl's output);
* the floor: one resolve per file (``get_hf_file_metadata``), then one ranged GET read with
  ``readinto`` into an 8 MiB buffer, hashed (sha256) and written: the least a client must do;
* ``pythia-tl convert`` of the revision, streamed (nothing cached before).

For each it reports the resolver requests the stand-in counted and the bytes it served. Before
each client the page cache's dirty pages are written out (``os.sync``), so that no client pays for
the write-back of the one before; with ``--runs N`` the clients run in turn N times and each
figure is the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import run  # noqa: E402 (the launcher, the checkpoint cache)
from hub_server import StandInHub  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1
GB = 1e9

DOWNLOAD_CODE = """
import sys
from huggingface_hub import hf_hub_download
for name in sys.argv[2:]:
    hf_hub_download(sys.argv[1], name)
"""

# The same download made durable, as pythia-tl makes its output: each file fsynced once fetched.
DURABLE_DOWNLOAD_CODE = """
import os, sys
from huggingface_hub import hf_hub_download
for name in sys.argv[2:]:
    fd = os.open(os.path.realpath(hf_hub_download(sys.argv[1], name)), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""

FLOOR_CODE = """
import hashlib, http.client, sys
from urllib.parse import urlsplit
from huggingface_hub import get_hf_file_metadata, hf_hub_url
repo, out = sys.argv[1], sys.argv[2]
buffer = memoryview(bytearray(8 << 20))
for name in sys.argv[3:]:
    meta = get_hf_file_metadata(hf_hub_url(repo, name))
    url = urlsplit(meta.location)
    connection = http.client.HTTPConnection(url.hostname, url.port)
    whole = {"Range": f"bytes=0-{meta.size - 1}"}
    connection.request("GET", f"{url.path}?{url.query}", headers=whole)
    response = connection.getresponse()
    digest = hashlib.sha256()
    with open(f"{out}/{name}", "wb") as f:
        while n := response.readinto(buffer):
            digest.update(buffer[:n])
            f.write(buffer[:n])
    assert digest.hexdigest() == meta.etag, name
"""


DURABLE = "hf_hub_download + fsync"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1.4b")
    parser.add_argument(
        "--rates", default="0,250e6", help="link rates in bytes per second (0: unthrottled)"
    )
    parser.add_argument("--latency", type=float, default=0.030, help="seconds per request")
    parser.add_argument("--runs", type=int, default=1, help="runs per client (median taken)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS-remote.md")
    args = parser.parse_args()
    os.sched_setaffinity(0, {SERVER_CORE})
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for size in args.sizes.split(","):
        layout = "safetensors-sharded" if size in ("6.9b", "12b") else "safetensors"
        folder = run.DEFAULT_CACHE / f"pythia-{size}-{layout}"
        run.ensure_checkpoint(folder, size, layout)
        for rate in (float(r) for r in args.rates.split(",")):
            for row in bench(size, folder, rate or None, args.latency, args.runs):
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    command = "python benchmarks/remote.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0]
    text = (
        f"```\n{command}\n```\n\nStarted {started} on {os.cpu_count()} cores; the stand-in on "
        f"core {SERVER_CORE}, each client on core {CLIENT_CORE}; {args.latency * 1e3:.0f} ms "
        f"per request; the median of {args.runs} run(s) of each client; load average {load:.1f} at "
        f"the end.\n\n{render(rows)}\n"
    )
    args.output.write_text(text)
    print(text)
    return 0


def bench(size: str, folder: Path, rate: float | None, latency: float, runs: int) -> list[dict]:
    repo_id = f"EleutherAI/pythia-{size}"
    weights = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    weight_bytes = sum((folder / name).stat().st_size for name in weights)
    rows = []
    with (
        StandInHub(bytes_per_second=rate, latency=latency) as hub,
        tempfile.TemporaryDirectory(dir=run.DEFAULT_CACHE) as scratch,
    ):
        hub.add_revision(repo_id, "main", folder)
        work = Path(scratch)
        base = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        base.pop("HF_HUB_OFFLINE", None)
        clients = {
            "hf_hub_download": [sys.executable, "-c", DOWNLOAD_CODE, repo_id, *weights],
            DURABLE: [sys.executable, "-c", DURABLE_DOWNLOAD_CODE, repo_id, *weights],
            "floor loop": [sys.executable, "-c", FLOOR_CODE, repo_id, str(work), *weights],
            "pythia-tl convert": [
                *run.pythia_tl_argv(),
                "convert",
                repo_id,
                "-o",
                str(work / "out.safetensors"),
            ],
        }
        samples: dict[str, list[dict]] = {client: [] for client in clients}
        for _ in range(runs):
            for client, argv in clients.items():
                home = work / "home"
                hub.clear_requests()
                os.sync()
                measured = measure(argv, work / "log.txt", {**base, "HF_HOME": str(home)})
                samples[client].append(
                    {
                        "seconds": measured.seconds,
                        "cpu": measured.cpu,
                        "rss": measured.max_rss,
                        "resolvers": hub.resolver_requests,
                        "fetched": hub.served_bytes(),
                    }
                )
                run.remove(home)
                for path in work.iterdir():
                    if path.name != "log.txt":
                        run.remove(path)
        for client, measured_runs in samples.items():
            rows.append(
                {
                    "size": size,
                    "rate": rate,
                    "weight_bytes": weight_bytes,
                    "files": len(weights),
                    "client": client,
                    "runs": runs,
                    **{
                        key: statistics.median(m[key] for m in measured_runs)
                        for key in ("seconds", "cpu", "rss", "resolvers", "fetched")
                    },
                }
            )
    return rows


def measure(argv: list[str], log: Path, env: dict[str, str]) -> run.Measurement:
    """``run.measure`` with the Hub online, on the client core."""
    with log.open("wb") as err:
        done = subprocess.run(
            [sys.executable, "-S", "-c", run.LAUNCHER, *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            check=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {CLIENT_CORE}),
        )
    status, max_rss_kb, cpu, seconds = done.stdout.split()
    if int(status) != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[:3]} exited {status.decode()}: {' | '.join(tail)}")
    return run.Measurement(float(seconds), float(cpu), int(max_rss_kb) * 1024)


def render(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | link | client | wall | CPU | CPU s/GB | resolver requests | peak RSS "
        "| fetched | wall / download | wall / durable download | CPU / download "
        "| CPU / floor |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        group = [o for o in rows if o["size"] == r["size"] and o["rate"] == r["rate"]]
        download = next(o for o in group if o["client"] == "hf_hub_download")
        durable = next(o for o in group if o["client"] == DURABLE)
        floor = next(o for o in group if o["client"] == "floor loop")
        link = "unthrottled" if r["rate"] is None else f"{r['rate'] / 1e6:.0f} MB/s"
        lines.append(
            f"| pythia-{r['size']} ({r['weight_bytes'] / GB:.2f} GB, {r['files']} files) "
            f"| {link} | {r['client']} | {r['seconds']:.1f} s | {r['cpu']:.1f} s "
            f"| {r['cpu'] / (r['weight_bytes'] / GB):.2f} | {r['resolvers']} "
            f"| {r['rss'] / 2**20:.0f} MB | {r['fetched'] / GB:.2f} GB "
            f"| {r['seconds'] / download['seconds']:.2f} "
            f"| {r['seconds'] / durable['seconds']:.2f} | {r['cpu'] / download['cpu']:.2f} "
            f"| {r['cpu'] / floor['cpu']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
