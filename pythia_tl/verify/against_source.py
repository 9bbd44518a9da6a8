"""Does every tensor equal what the conversion derives from the source?

The source is the one the metadata records (a folder, or a Hub repo pinned to the recorded
commit) or the one given on the command line. The recorded conversion is planned again from the
source's headers and run tensor by tensor (with the recorded processing steps, if any), and each
result is compared with the file's tensor as it streams past, so memory stays bounded by the
largest tensor as in a conversion. The source's files are hashed meanwhile and must have the
sha256 the metadata records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from pythia_tl.engine.output_plan import OutputPlan, plan_output
from pythia_tl.engine.pipeline import Converted, convert_tensors, finish
from pythia_tl.engine.reading import computes_sha256, open_source
from pythia_tl.errors import Param, PythiaTLError, SourceError, UsageError
from pythia_tl.mapping.plan import PlannedTensor, plan_conversion
from pythia_tl.mapping.tl_config import tl_config
from pythia_tl.output.file_tensors import read_tensor
from pythia_tl.output.metadata import ConversionRecord, OutputFile
from pythia_tl.processing import ProcessingPlan, process_stream
from pythia_tl.source import ResolvedSource, resolve_model_name, resolve_source
from pythia_tl.source.config import NeoXConfig
from pythia_tl.verify.compare import FLOAT32_SLACK, Mismatch, bitwise_mismatch, tolerance_mismatch
from pythia_tl.verify.report import Check

# Fields of tl_config that name the model rather than follow from config.json.
_NAMING_FIELDS = frozenset({"model_name", "tokenizer_name"})
_MAX_LISTED = 10


@dataclass(frozen=True)
class SourceRequest:
    """Where to find the source: SOURCE from the command line (with its revision), or None to
    use the one the metadata records."""

    source: str | None = None
    revision: str | None = None
    step: int | None = None
    cache_dir: Path | None = None
    checkpoint_index: int | None = None


def locate_source(
    recorded: ConversionRecord, request: SourceRequest, *, download: bool = False
) -> ResolvedSource:
    """Open the source to compare with; SourceError (or a subclass) when it cannot be had,
    SourceUnavailable when it cannot be had here and now. ``download``: a Hub source's weights
    into the cache (for transformers, which reads files), rather than streamed."""
    if request.source is None:
        if recorded.from_folder:
            if not Path(recorded.source).is_dir():
                raise SourceError(
                    f"{recorded.source}: the source folder recorded in the metadata is gone; "
                    "pass the source as ",
                    Param("source"),
                    " (or ",
                    Param("check_source", False),
                    ")",
                )
            return resolve_source(recorded.source)
        return resolve_source(
            recorded.source,
            revision=recorded.commit,
            cache_dir=request.cache_dir,
            tokenizer=False,
            download=download,
        )
    revision = request.revision
    chose = request.step is not None or request.checkpoint_index is not None
    if revision is None and not chose and _names_repo(request.source, recorded.source):
        revision = recorded.commit  # the same repository: the commit that was converted
    return resolve_source(
        request.source,
        revision=revision,
        step=request.step,
        cache_dir=request.cache_dir,
        checkpoint_index=request.checkpoint_index,
        tokenizer=False,
        download=download,
    )


def check_against_source(
    path: Path,
    info: OutputFile,
    recorded: ConversionRecord,
    source: ResolvedSource,
    advance: Callable[[int], None] = lambda n: None,
) -> Check:
    where = _describe(source)
    checkpoint = source.checkpoint
    try:
        full = plan_conversion(checkpoint, recorded.dtype.name)
        out = plan_output(full, recorded.processing, recorded.selection)
    except PythiaTLError as exc:
        return Check.failed("source", f"{where}: {exc}")
    problem = (
        _config_problem(recorded, full.config)
        or _layout_problem(info, out)
        or _files_problem(recorded, checkpoint.files)
    )
    if problem is not None:
        return Check.failed("source", f"{where}: {problem}")
    plan, written = out.conversion, out.processing
    computed = computes_sha256(checkpoint, whole=not out.is_partial)
    try:
        with ExitStack() as stack:
            reader, order, hashed = open_source(
                stack,
                checkpoint,
                plan,
                source.provenance.expected_sha256,
                whole=not out.is_partial,
            )
            stream = out.written(process_stream(written, convert_tensors(plan, reader, order)))
            mismatches = list(_compare(path, written, stream, advance))
            digests = hashed()
    except PythiaTLError as exc:  # a source that fails while being read
        return Check.failed("source", f"{where}: {exc}")
    changed = [
        f"{name} has sha256 {digest}, the metadata records {recorded.source_files[name]}"
        for name, digest in sorted(digests.items())
        if recorded.source_files[name] != digest
    ]
    rule = _rule(written, out.tensors)
    data: dict[str, object] = {"source": where, "tensors": len(out.tensors), "comparison": rule}
    if mismatches or changed:
        problems = [m.describe() for m in mismatches] + [
            f"{where}: {change}: not the source this file was converted from" for change in changed
        ]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return Check.failed(
            "source",
            f"{problems[0]}{more}",
            mismatches=[m.to_json() for m in mismatches[:_MAX_LISTED]],
            tensors_differing=len(mismatches),
            source_files_differing=changed,
            **data,
        )
    data["source_sha256"] = "computed" if computed else "announced"
    if computed:
        hashes = "its files, hashed now, have the recorded sha256"
    else:
        hashes = (
            "its files were not hashed (a partial file is checked by the byte ranges it needs): "
            "the Hub announces the recorded sha256"
        )
    if not recorded.sha256_computed:
        hashes += " (which the conversion recorded as announced by the Hub, not computed)"
    detail = f"{len(out.tensors)} tensors {rule}, from {where}; {hashes}"
    return Check.ok("source", detail, **data)


def _compare(
    path: Path,
    written: ProcessingPlan,
    stream: Iterable[Converted],
    advance: Callable[[int], None],
) -> Iterator[Mismatch]:
    for planned, tensor in stream:
        actual = read_tensor(path, planned.key)
        if written.passes_for(planned.key):
            mismatch = tolerance_mismatch(planned.key, actual, tensor)
        else:
            mismatch = bitwise_mismatch(planned.key, actual, finish(tensor, planned))
        advance(actual.numel() * actual.element_size())
        del actual, tensor
        if mismatch is not None:
            yield mismatch


def _config_problem(recorded: ConversionRecord, config: NeoXConfig) -> str | None:
    expected = tl_config(config, "", None, recorded.processing.normalization_type)
    for key, value in expected.items():
        if key not in _NAMING_FIELDS and recorded.tl_config.get(key) != value:
            return (
                f"its config.json gives tl_config {key} = {value!r}, the metadata records "
                f"{recorded.tl_config.get(key)!r}"
            )
    return None


def _layout_problem(info: OutputFile, out: OutputPlan) -> str | None:
    planned = {t.key: t.shape for t in out.tensors}
    for key in sorted(planned.keys() | info.tensors.keys()):
        if key not in info.tensors:
            return f"the conversion gives {key}, which the file lacks"
        if key not in planned:
            return f"the file holds {key}, which the conversion does not give"
        if tuple(info.tensors[key][1]) != planned[key]:
            return (
                f"the conversion gives {key} shape {list(planned[key])}, the file holds "
                f"{info.tensors[key][1]}"
            )
    return None


def _files_problem(recorded: ConversionRecord, files: tuple[Path, ...]) -> str | None:
    names = {file.name for file in files}
    if names != set(recorded.source_files):
        return (
            f"its weight files are {', '.join(sorted(names))}, the metadata records "
            f"{', '.join(sorted(recorded.source_files))}"
        )
    return None


def _rule(written: ProcessingPlan, planned: tuple[PlannedTensor, ...]) -> str:
    """How the tensors were compared, in words."""
    sources = sorted({t.source_dtype.name for t in planned if t.source_dtype is not None})
    target = planned[0].dtype.name if planned else "?"
    if sources == [target]:
        cast = f"{target}, as in the source"
    else:
        cast = f"{', '.join(sources)} cast to {target}, rounded to nearest even"
    processed = sum(1 for t in planned if written.passes_for(t.key))
    if not processed:
        return f"bitwise equal to a fresh conversion ({cast})"
    others = len(planned) - processed
    rule = (
        f"checked against a fresh conversion: {processed} processed within eps({target}) x "
        f"|value| + {FLOAT32_SLACK:g} x max|value| of its float32 processing"
    )
    return rule + (f", {others} bitwise equal ({cast})" if others else "")


def _names_repo(source: str, repo_id: str) -> bool:
    if Path(source).expanduser().is_dir():
        return False
    try:
        return resolve_model_name(source).repo_id == repo_id
    except UsageError:
        return False


def _describe(source: ResolvedSource) -> str:
    provenance = source.provenance
    if provenance.commit:
        return f"{provenance.source}@{provenance.commit[:12]}"
    return provenance.source
