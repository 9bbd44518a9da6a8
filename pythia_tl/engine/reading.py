"""Opening a checkpoint's tensors for a conversion or a verification, with the source hashed
as it is read: one pipeline for both."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack

from pythia_tl.engine.hashing import SourceHashes, check_sha256
from pythia_tl.engine.pipeline import Reader
from pythia_tl.errors import SourceError
from pythia_tl.hub.stream_reader import StreamReader
from pythia_tl.mapping.plan import ConversionPlan, PlannedSource
from pythia_tl.source.checkpoint import Checkpoint
from pythia_tl.source.reader import TensorReader


def open_source(
    stack: ExitStack,
    checkpoint: Checkpoint,
    plan: ConversionPlan,
    expected_sha256: Mapping[str, str],
    *,
    whole: bool,
) -> tuple[Reader, list[PlannedSource] | None, Callable[[], dict[str, str]]]:
    """The reader of the plan's sources, the order to read them in (None: plan order), and
    the source files' checked sha256 (called once every tensor is read).

    A local checkpoint is read by byte ranges, in plan order, and hashed on a second
    thread. A remote one is streamed in the order its files store the tensors, nothing of it
    written to disk: ``whole`` files, hashed as the bytes pass, or only the plan's byte ranges,
    whose files' sha256 are then the ones the Hub announces (no file is read whole to check
    them).
    """
    if not checkpoint.is_remote:
        hashes = stack.enter_context(SourceHashes(checkpoint.files))
        reader = stack.enter_context(TensorReader(checkpoint))
        return reader, None, lambda: hashes.checked(expected_sha256)
    names = [source.name for source in plan.sources if source.name is not None]
    stream = stack.enter_context(StreamReader(checkpoint, names, whole_files=whole))
    rank = {name: index for index, name in enumerate(stream.order)}
    # Sources made from nothing (unembed.b_U) first: their part is then complete sooner.
    order = sorted(plan.sources, key=lambda s: rank[s.name] if s.name else -1)
    if not whole:
        return stream, order, lambda: _announced(checkpoint, expected_sha256)
    return stream, order, lambda: check_sha256(stream.digests(), expected_sha256)


def _announced(checkpoint: Checkpoint, expected_sha256: Mapping[str, str]) -> dict[str, str]:
    missing = [file.name for file in checkpoint.files if file.name not in expected_sha256]
    if missing:
        raise SourceError(
            f"{checkpoint.files[0].parent}: the Hub announces no sha256 for {missing[0]}, which a "
            "partial conversion records instead of hashing the whole file"
        )
    return {file.name: expected_sha256[file.name] for file in checkpoint.files}
