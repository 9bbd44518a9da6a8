"""Is the file a sound safetensors file whose every tensor can be read and is finite?

The header is parsed by the safetensors library, which refuses an oversized header, malformed
JSON, unknown dtypes, offsets that overlap, leave gaps or run past the end, byte lengths that
disagree with shape and dtype, and trailing bytes. On top of that each tensor is read, one at a
time, and must be a float tensor with no NaN or infinity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError

from pythia_tl.dtypes import OUTPUT_DTYPES
from pythia_tl.errors import OutputFileError
from pythia_tl.output.metadata import OutputFile, read_output
from pythia_tl.verify.compare import chunks
from pythia_tl.verify.file_tensors import read_tensor
from pythia_tl.verify.report import Check

FLOAT_DTYPE_CODES = frozenset(dtype.safetensors for dtype in OUTPUT_DTYPES)
_MAX_LISTED = 10


def check_integrity(
    path: Path, advance: Callable[[int], None] = lambda n: None
) -> tuple[Check, OutputFile | None]:
    """The check's result, and the file's header when it could be read."""
    try:
        info = read_output(path)
    except OutputFileError as exc:
        return Check.failed("integrity", str(exc)), None
    problems: list[str] = []
    try:
        for name, (dtype, _) in info.tensors.items():
            if dtype not in FLOAT_DTYPE_CODES:
                problems.append(f"{name} has dtype {dtype}, expected F32, F16 or BF16")
                continue
            tensor = read_tensor(path, name)
            problem = _non_finite(name, tensor)
            if problem is not None:
                problems.append(problem)
            advance(tensor.numel() * tensor.element_size())
            del tensor
    except SafetensorError as exc:
        return Check.failed("integrity", f"{path}: a tensor cannot be read ({exc})"), info
    counts = {"tensors": len(info.tensors), "bytes": info.size}
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check.failed(
            "integrity", f"{problems[0]}{more}", problems=problems[:_MAX_LISTED], **counts
        ), info
    detail = (
        f"{len(info.tensors)} tensors, {info.size:,} bytes: header valid, every tensor "
        "readable and finite"
    )
    return Check.ok("integrity", detail, **counts), info


def _non_finite(name: str, tensor: torch.Tensor) -> str | None:
    flat = tensor.reshape(-1)
    parts = chunks(flat)
    if all(bool(torch.isfinite(flat[part]).all()) for part in parts):
        return None
    count, first = 0, None
    for part in parts:
        bad = ~torch.isfinite(flat[part])
        if first is None and bool(bad.any()):
            first = part.start + int(bad.nonzero()[0, 0])
        count += int(bad.sum())
    assert first is not None
    index = [int(i) for i in torch.unravel_index(torch.tensor(first), tensor.shape)]
    return f"{name} has {count} non-finite values (first {flat[first].item()} at {index})"
