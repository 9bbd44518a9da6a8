"""Peak memory of a conversion follows the largest tensor, not the checkpoint.

A ~440 MB checkpoint whose largest tensor is ~17 MB is converted by the CLI in a subprocess; the
kernel's record of the child's peak resident set (``os.wait4``'s ``ru_maxrss``, which counts
mapped file pages as well as allocations) must stay within twice the largest output tensor plus
a margin, above the peak of a Python that only imports torch and pythia-tl. Reading whole files,
or keeping every page of a memory-mapped source resident, would add the checkpoint's size.
No timing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hub_server import StandInHub
from peak_rss import BASELINE_ARGV, peak_rss
from synthetic import PythiaShape, write_checkpoint

from pythia_tl.mapping.plan import plan_conversion
from pythia_tl.source.checkpoint import open_checkpoint

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="ru_maxrss is in kilobytes and counts mapped pages on Linux"
)

# 16 layers of d_model 1024 and a small vocabulary: ~437 MB of float16, no tensor above 17 MB.
SHAPE = PythiaShape(n_layers=16, d_model=1024, n_heads=16, d_vocab=8192)
# Allocator slack, thread stacks and the modules a conversion imports beyond the baseline's.
MARGIN = 150 * 2**20


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory")
    folders = {layout: root / layout for layout in ("safetensors", "bin")}
    for layout, folder in folders.items():
        write_checkpoint(folder, SHAPE, layout=layout, legacy_buffers=False)  # type: ignore[arg-type]
    return folders


@pytest.fixture(scope="module")
def baseline() -> int:
    return peak_rss(BASELINE_ARGV)


@pytest.mark.parametrize(("layout", "dtype"), [("safetensors", "auto"), ("bin", "float32")])
def test_peak_memory_follows_the_largest_tensor(
    checkpoints: dict[str, Path], baseline: int, layout: str, dtype: str, tmp_path: Path
) -> None:
    folder = checkpoints[layout]
    checkpoint = open_checkpoint(folder)
    size = sum(file.stat().st_size for file in checkpoint.files)
    plan = plan_conversion(checkpoint, dtype)
    largest = max(t.nbytes for t in plan.tensors)
    assert largest * 10 < size  # the premise: a checkpoint much larger than any one tensor

    output = tmp_path / "out.safetensors"
    argv = [sys.executable, "-m", "pythia_tl", "convert", str(folder), "-o", str(output)]
    used = peak_rss([*argv, "--dtype", dtype, "--quiet"]) - baseline

    assert output.stat().st_size > plan.nbytes  # every tensor was written
    mb = 2**20
    assert used <= 2 * largest + MARGIN, (
        f"peak {used / mb:.0f} MB above the baseline; bound {(2 * largest + MARGIN) / mb:.0f} MB"
    )
    assert used < size / 2, (
        f"peak {used / mb:.0f} MB above the baseline, checkpoint {size / mb:.0f} MB"
    )


# What streaming from the Hub holds besides the tensors: the chunks in flight (8 connections x
# 4 MB, held twice while huggingface_hub joins a response body) and up to 32 MB of tensors
# fetched ahead of the converter (the CLI has glibc return freed chunks at once, see
# pythia_tl/cli/memory.py; without that, about 100 MB more stays resident).
STREAM_BUFFERS = 128 * 2**20


def test_peak_memory_of_a_streamed_conversion_follows_the_largest_tensor(
    checkpoints: dict[str, Path], baseline: int, stand_in_hub: StandInHub, tmp_path: Path
) -> None:
    folder = checkpoints["safetensors"]
    stand_in_hub.add_revision("EleutherAI/pythia-70m", "main", folder)
    checkpoint = open_checkpoint(folder)
    size = sum(file.stat().st_size for file in checkpoint.files)
    largest = max(t.nbytes for t in plan_conversion(checkpoint).tensors)
    output = tmp_path / "out.safetensors"
    argv = [sys.executable, "-m", "pythia_tl", "convert", "pythia-70m", "-o", str(output), "-q"]
    used = peak_rss(argv, online=True) - baseline
    assert stand_in_hub.served_bytes() >= size  # streamed, not read from a cache
    mb = 2**20
    bound = 2 * largest + MARGIN + STREAM_BUFFERS
    assert used <= bound, f"peak {used / mb:.0f} MB above the baseline; bound {bound / mb:.0f} MB"
