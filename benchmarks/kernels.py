"""The conversion's two per-byte kernels, measured on this machine's core: sha256 (hashlib, as
every conversion hashes its source) and the copy of a transpose, by each of
``pythia_tl.engine.copy.KERNELS``, on the weight shapes of pythia-1.4b and pythia-12b (float16).

    python benchmarks/kernels.py                       # writes benchmarks/RESULTS-kernels.md

Which transpose kernel is faster differs between hosts, which is why a conversion times both on
its first copies (``Transposes``); this table shows the two side by side on one host. Figures are
CPU seconds per GB of the thread doing the work (``time.thread_time``), the best of 3 runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pythia_tl.engine.copy import KERNELS, Kernel  # noqa: E402

# (model, weight, rows, columns) of the source matrices whose transposes the table copies.
SHAPES = [
    ("pythia-1.4b", "dense_h_to_4h", 8192, 2048),
    ("pythia-1.4b", "dense_4h_to_h", 2048, 8192),
    ("pythia-12b", "dense_h_to_4h", 20480, 5120),
    ("pythia-12b", "dense_4h_to_h", 5120, 20480),
    ("pythia-12b", "attention.dense", 5120, 5120),
]
RUNS = 3


def best_seconds_per_gb(work: Callable[[], None], nbytes: int) -> float:
    work()  # warm: pages touched, caches filled
    best = float("inf")
    for _ in range(RUNS):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best / (nbytes / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS-kernels.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a plain conversion runs
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    data = memoryview(bytearray(os.urandom(1 << 20)) * 256)

    def hash_all() -> None:
        digest = hashlib.sha256()
        for at in range(0, len(data), 1 << 20):
            digest.update(data[at : at + (1 << 20)])

    rows.append(
        f"| sha256 (hashlib, 1 MiB pieces) | - | {best_seconds_per_gb(hash_all, len(data)):.2f} |"
    )
    for model, weight, n_rows, n_columns in SHAPES:
        source = torch.randn(n_rows, n_columns).half()
        target = torch.empty(n_columns, n_rows, dtype=torch.half)
        for name, kernel in KERNELS.items():

            def copy(
                kernel: Kernel = kernel, t: torch.Tensor = target, s: torch.Tensor = source
            ) -> None:
                kernel(t, s.t())

            rate = best_seconds_per_gb(copy, source.numel() * 2)
            assert torch.equal(target, source.t())
            rows.append(
                f"| transpose `{name}` | {model} {weight} [{n_rows}, {n_columns}] | {rate:.2f} |"
            )
    command = "python benchmarks/kernels.py " + " ".join(sys.argv[1:])
    text = (
        f"```\n{command.strip()}\n```\n\nStarted {started} on {os.cpu_count()} cores, torch "
        f"{torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end.\n\n"
        "| kernel | shape (float16) | CPU s/GB |\n|---|---|--:|\n" + "\n".join(rows) + "\n"
    )
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
