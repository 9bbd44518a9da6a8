"""Fingerprints of a checkpoint's tensor data, read by small byte ranges (``audit --deep``).

Two revisions whose files differ (re-serialised, another format, another shard split) can still
hold the same tensors (EleutherAI/pythia #203). A fingerprint catches that without downloading
the weights: for every weight tensor, its name, dtype and shape, and ``WINDOW`` bytes of its
data at three fixed places (start, middle, end; all of it when it is small). The windows of one
file are read in order, those close together merged into one request.

Tensors are named as the conversion table reads them: buffers that carry no learned values
(old transformers' attention masks) are left out, and ``lm_head.weight`` is ``embed_out.weight``,
so a checkpoint fingerprints the same whatever its format or head spelling.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pythia_tl.errors import CheckpointError
from pythia_tl.hub.remote import RemoteFile
from pythia_tl.mapping.pythia import IGNORED_SOURCE_KEYS
from pythia_tl.source.checkpoint import Checkpoint, TensorInfo
from pythia_tl.source.spans import contiguous_stride

# Bytes of a tensor read at each of its three places.
WINDOW = 1024
# Windows of one file closer than this are read in one request, up to MAX_READ bytes.
MERGE_GAP = 16 * 1024
MAX_READ = 1 << 20
_WORKERS = 8
_HEAD_ALIASES = {"lm_head.weight": "embed_out.weight"}


@dataclass(frozen=True)
class Fingerprint:
    """A checkpoint's fingerprint, and the bytes of tensor data fetched from the Hub for it."""

    digest: str
    fetched_bytes: int


@dataclass(frozen=True)
class _Window:
    tensor: str
    start: int
    end: int


def data_region(info: TensorInfo) -> tuple[int, int]:
    """The bytes [start, end) of the file that hold ``info``'s values."""
    span = info.span
    if span is None:
        raise CheckpointError(f"{info.file}: tensor {info.name}: its storage offset is unknown")
    if span.stride != contiguous_stride(info.shape):
        return span.offset, span.offset + span.nbytes  # a view: the whole storage
    start = span.offset + span.storage_offset * info.dtype.itemsize
    return start, start + math.prod(info.shape) * info.dtype.itemsize


def windows(name: str, start: int, end: int) -> list[_Window]:
    """Where a tensor's data at [start, end) is sampled: all of it when it is small."""
    size = end - start
    if size <= 3 * WINDOW:
        return [_Window(name, start, end)]
    middle = start + (size // 2) - WINDOW // 2
    return [
        _Window(name, start, start + WINDOW),
        _Window(name, middle, middle + WINDOW),
        _Window(name, end - WINDOW, end),
    ]


def merged_reads(sampled: Iterable[_Window]) -> list[tuple[int, int]]:
    """The requests that fetch ``sampled`` windows of one file: in file order, a window closer
    than MERGE_GAP to the previous request joining it while that stays within MAX_READ."""
    reads: list[list[int]] = []
    for window in sorted(sampled, key=lambda w: w.start):
        if reads:
            last = reads[-1]
            close = window.start - last[1] <= MERGE_GAP
            if close and max(last[1], window.end) - last[0] <= MAX_READ:
                last[1] = max(last[1], window.end)
                continue
        reads.append([window.start, window.end])
    return [(start, end) for start, end in reads]


def fingerprint(checkpoint: Checkpoint) -> Fingerprint:
    """The fingerprint of every weight tensor of ``checkpoint`` (on disk or on the Hub)."""
    by_file: dict[Path, list[_Window]] = {}
    described: dict[str, str] = {}
    for info in checkpoint.tensors.values():
        if IGNORED_SOURCE_KEYS.fullmatch(info.name):
            continue
        name = _HEAD_ALIASES.get(info.name, info.name)
        described[name] = f"{name}|{info.dtype.name}|{list(info.shape)}"
        by_file.setdefault(info.file, []).extend(windows(name, *data_region(info)))
    jobs = [
        (file, start, end)
        for file, sampled in by_file.items()
        for start, end in merged_reads(sampled)
    ]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        data = list(pool.map(lambda job: _read(checkpoint, *job), jobs))
    pieces: dict[tuple[Path, int], bytes] = {
        (file, start): chunk for (file, start, _), chunk in zip(jobs, data, strict=True)
    }
    tensor_digests = {name: hashlib.sha256(text.encode()) for name, text in described.items()}
    for file, sampled in by_file.items():
        starts = sorted(start for (f, start) in pieces if f == file)
        for window in sorted(sampled, key=lambda w: w.start):
            start = starts[bisect_right(starts, window.start) - 1]
            chunk = pieces[(file, start)]
            tensor_digests[window.tensor].update(chunk[window.start - start : window.end - start])
    total = hashlib.sha256()
    for name in sorted(tensor_digests):
        total.update(tensor_digests[name].digest())
    fetched = sum(end - start for file, start, end in jobs if file in checkpoint.remote)
    return Fingerprint(total.hexdigest(), fetched)


def _read(checkpoint: Checkpoint, file: Path, start: int, end: int) -> bytes:
    remote: RemoteFile | None = checkpoint.remote.get(file)
    if remote is not None:
        data = remote.read(start, end)
    else:
        try:
            with open(file, "rb") as handle:
                handle.seek(start)
                data = handle.read(end - start)
        except OSError as exc:
            raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if len(data) != end - start:
        raise CheckpointError(f"{file}: bytes [{start}, {end}) could not be read whole")
    return data
