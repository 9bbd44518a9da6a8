"""Peak memory of ``convert --process`` follows the largest tensor: the embedding and unembedding
are processed a chunk of the vocabulary at a time, never as a whole float32 copy.

A checkpoint with a large vocabulary (the embedding and unembedding are ~90% of it, 128 MB each
in float16) is converted by the CLI in a subprocess, with and without processing. With
processing, its peak resident set (``ru_maxrss``, as in test_memory.py) must stay within twice
the largest output tensor, one layer in float32 and a margin above the peak of a Python that
only imports torch and pythia-tl; and it may exceed the unprocessed conversion's peak by less
than half of what a float32 copy of the largest tensor would take. No timing is asserted.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from peak_rss import BASELINE_ARGV, peak_rss
from synthetic import PythiaShape, write_checkpoint

from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.processing import Processing, plan_processing
from pythia_tl.source.checkpoint import open_checkpoint

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="ru_maxrss is in kilobytes and counts mapped pages on Linux"
)

SHAPE = PythiaShape(n_layers=2, d_model=512, n_heads=8, d_vocab=131072)
# Allocator slack, thread stacks, the modules a conversion imports beyond the baseline's, and
# the few float32 chunks of the vocabulary processed at a time.
MARGIN = 150 * 2**20
MB = 2**20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("processing-memory") / "ckpt"
    write_checkpoint(folder, SHAPE, layout="safetensors", legacy_buffers=False)
    return folder


@pytest.fixture(scope="module")
def baseline() -> int:
    return peak_rss(BASELINE_ARGV)


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_processing_peak_memory_follows_the_largest_tensor(
    checkpoint: Path, baseline: int, dtype: str, tmp_path: Path
) -> None:
    plan = plan_conversion(open_checkpoint(checkpoint), dtype)
    written = plan_processing(plan, Processing.all())
    largest = max(written.tensors, key=lambda t: t.nbytes)
    float32_copy = 4 * math.prod(largest.shape)
    layer = 4 * sum(math.prod(t.shape) for t in plan.tensors if t.key.startswith("blocks.0."))
    assert largest.nbytes * 3 > written.nbytes  # the premise: the vocabulary dominates

    def used(*flags: str) -> int:
        output = tmp_path / "out.safetensors"
        argv = [sys.executable, "-m", "pythia_tl", "convert", str(checkpoint), "-o", str(output)]
        peak = peak_rss([*argv, "--dtype", dtype, "--quiet", "--force", *flags])
        assert output.stat().st_size > written.nbytes  # every tensor was written
        return peak - baseline

    processed, raw = used("--process"), used()

    bound = 2 * largest.nbytes + layer + MARGIN  # one layer in float32
    assert processed <= bound, (
        f"peak {processed / MB:.0f} MB above the baseline; bound {bound / MB:.0f} MB"
    )
    assert processed - raw < float32_copy / 2, (
        f"processing added {(processed - raw) / MB:.0f} MB to the peak; "
        f"a float32 copy of {largest.key} takes {float32_copy / MB:.0f} MB"
    )
