"""Is the file a sound safetensors file whose every tensor can be read and is finite?

The header is parsed by the safetensors library, which refuses an oversized header, malformed
JSON, unknown dtypes, offsets that overlap, leave gaps or run past the end, byte lengths that
disagree with shape and dtype, and trailing bytes. On top of that each tensor is read, one at a
time, and must be a float tensor with no NaN or infinity, unless the metadata records that the
conversion allowed them (``nonfinite: allowed``): the rule ``convert`` applies
(``pythia_tl.engine.finite``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pythia_tl.dtypes import OUTPUT_DTYPES
from pythia_tl.engine.finite import find_nonfinite
from pythia_tl.errors import OutputFileError
from pythia_tl.output.file_tensors import read_tensor
from pythia_tl.output.metadata import NONFINITE_KEY, OutputFile, read_output
from pythia_tl.verify.report import Check

FLOAT_DTYPE_CODES = tuple(dtype.safetensors for dtype in OUTPUT_DTYPES)
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
    allowed = info.metadata.get(NONFINITE_KEY) == "allowed"
    try:
        for name, (dtype, _) in info.tensors.items():
            if dtype not in FLOAT_DTYPE_CODES:
                expected = ", ".join(FLOAT_DTYPE_CODES)
                problems.append(f"{name} has dtype {dtype}, expected one of {expected}")
                continue
            tensor = read_tensor(path, name)
            found = None if allowed else find_nonfinite(name, tensor)
            if found is not None:
                problems.append(found.describe())
            advance(tensor.numel() * tensor.element_size())
            del tensor
    except OutputFileError as exc:
        return Check.failed("integrity", f"a tensor cannot be read: {exc}"), info
    counts = {"tensors": len(info.tensors), "bytes": info.size}
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check.failed(
            "integrity", f"{problems[0]}{more}", problems=problems[:_MAX_LISTED], **counts
        ), info
    finite = "(non-finite values allowed, as recorded)" if allowed else "and finite"
    detail = (
        f"{len(info.tensors)} tensors, {info.size:,} bytes: header valid, every tensor "
        f"readable {finite}"
    )
    return Check.ok("integrity", detail, **counts), info
