"""Is the metadata complete, and do the file's tensors follow from it?

Every key of the schema (``pythia_tl.output.metadata``) must be present and well formed, and the
tensors must be exactly those the Pythia table and the recorded processing passes produce for the
sizes ``tl_config`` states: same keys, shapes and dtype.
"""

from __future__ import annotations

from pythia_tl.engine.output_plan import plan_output
from pythia_tl.errors import OutputFileError, PythiaTLError, UsageError
from pythia_tl.mapping.plan import expected_plan
from pythia_tl.output.metadata import (
    ConversionRecord,
    OutputFile,
    check_tokenizer_record,
    parse_metadata,
)
from pythia_tl.verify.report import Check


def check_metadata(info: OutputFile) -> tuple[Check, ConversionRecord | None]:
    """The check's result, and the parsed metadata when it is complete and consistent."""
    try:
        recorded = parse_metadata(info)
        check_tokenizer_record(info.tokenizer)
        expected = check_tensors_follow(info, recorded)
    except PythiaTLError as exc:
        return Check.failed("metadata", str(exc)), None
    steps = ", ".join(recorded.processing.passes) or "none"
    detail = (
        f"complete; tl_config consistent; {len(expected)} tensors with the keys, shapes and "
        f"dtype ({recorded.dtype}) it implies; processing: {steps}"
    )
    return Check.ok("metadata", detail), recorded


def check_tensors_follow(
    info: OutputFile, recorded: ConversionRecord
) -> dict[str, tuple[int, ...]]:
    """OutputFileError unless the file's tensors are exactly those ``tl_config`` implies (keys,
    shapes, dtype); returns them."""
    expected = expected_tensors(recorded)
    _check_tensors(info, recorded, expected)
    return expected


def expected_tensors(recorded: ConversionRecord) -> dict[str, tuple[int, ...]]:
    """The keys and shapes the Pythia table and the processing passes give for the recorded
    sizes, in the order pythia-tl writes them."""
    plan = expected_plan(recorded.config, recorded.dtype)
    try:
        out = plan_output(plan, recorded.processing, recorded.selection)
    except UsageError as exc:
        raise OutputFileError(f"metadata selection: {exc}") from None
    return {t.key: t.shape for t in out.tensors}


def _check_tensors(
    info: OutputFile, recorded: ConversionRecord, expected: dict[str, tuple[int, ...]]
) -> None:
    dtype = recorded.dtype.safetensors
    missing = [key for key in expected if key not in info.tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise OutputFileError(f"tensor {missing[0]} is missing{more}; tl_config implies it")
    extra = sorted(set(info.tensors) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise OutputFileError(
            f"tensor {extra[0]} is not part of the layout tl_config implies{more}"
        )
    for key, shape in expected.items():
        actual_dtype, actual_shape = info.tensors[key]
        if tuple(actual_shape) != shape:
            raise OutputFileError(
                f"tensor {key} has shape {actual_shape}, tl_config implies {list(shape)}"
            )
        if actual_dtype != dtype:
            raise OutputFileError(
                f"tensor {key} has dtype {actual_dtype}, metadata dtype says {dtype}"
            )
