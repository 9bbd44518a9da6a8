"""``trace``: some TransformerLens keys of a model across training steps, into one safetensors
file whose every key is stacked over the steps (axis 0, in step order), the steps, revisions
and commits in its metadata (``output.metadata.build_trace_metadata``).

The steps are converted by ``batch`` (``--tensors``: only the byte ranges those keys need are
fetched) into a folder of parts beside the output, ``<output>.parts/``, one pythia-tl file per
step; so a trace stopped at any moment, ``kill -9`` included, resumes as a batch does: a rerun
converts only the steps whose part is missing or stale; a duplicate branch (the same weights as
another step) is not fetched, and stacks that step's tensors under its own step and commit. The
parts are then stacked one key at a time (memory: one stacked key) into the output, which
appears whole or not at all, and the parts folder is removed (``keep_parts`` keeps it).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pythia_tl.api.steps import hub_model_param, key_globs, step_spec
from pythia_tl.errors import Param, SourceError, UsageError
from pythia_tl.mapping.selection import parse_selection
from pythia_tl.output.atomic import check_target
from pythia_tl.processing import Processing

if TYPE_CHECKING:
    import torch

    from pythia_tl.batch import BatchReporter, BatchRequest, WorkItem
    from pythia_tl.engine.options import ConvertOptions

PARTS_SUFFIX = ".parts"


@dataclass(frozen=True)
class TraceResult:
    output: Path
    model: str
    steps: tuple[int, ...]
    commits: tuple[str, ...]
    tensors: int
    bytes: int
    # How the steps' parts were made: {"converted": N, "skipped": N, "duplicate": N}.
    parts: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {
            "output": str(self.output),
            "model": self.model,
            "steps": list(self.steps),
            "commits": list(self.commits),
            "tensors": self.tensors,
            "bytes": self.bytes,
            "parts": self.parts,
        }


def parts_folder(output: Path) -> Path:
    """Where a trace keeps its steps' files until they are stacked."""
    return output.with_name(output.name + PARTS_SUFFIX)


def trace(
    model: str,
    output: str | Path,
    tensors: str | Iterable[str],
    steps: str | Iterable[int] = "all",
    *,
    layers: str | None = None,
    dtype: str = "auto",
    process: bool = False,
    allow_nonfinite: bool = False,
    overwrite: bool = False,
    jobs: int = 1,
    cache_dir: str | Path | None = None,
    keep_downloads: bool = False,
    keep_parts: bool = False,
    reporter: BatchReporter | None = None,
) -> TraceResult:
    """Write the TransformerLens keys ``tensors`` (globs) of Hub model ``model`` at ``steps``
    (``"all"``, a SPEC such as ``"0,1,1000-143000:10000"``, or step numbers) into ``output``,
    each key stacked over the steps. Rerun after an interruption, it converts only what is
    missing. ``layers``, ``dtype``, ``process``, ``allow_nonfinite``, ``jobs``, ``cache_dir`` and
    ``keep_downloads`` are ``batch``'s; an existing ``output`` is replaced only with
    ``overwrite=True``."""
    from pythia_tl.engine.options import ConvertOptions
    from pythia_tl.mapping.plan import check_dtype

    globs = key_globs(tensors)
    if not globs:
        raise UsageError(Param("tensors"), ": name at least one TransformerLens key")
    check_dtype(dtype)
    options = ConvertOptions(
        dtype=dtype,
        processing=Processing.choose(process=process),
        selection=parse_selection(globs, layers),
        allow_nonfinite=allow_nonfinite,
    )
    return trace_with(
        model,
        output,
        options,
        steps,
        overwrite=overwrite,
        jobs=jobs,
        cache_dir=cache_dir,
        keep_downloads=keep_downloads,
        keep_parts=keep_parts,
        reporter=reporter,
    )


def trace_with(
    model: str,
    output: str | Path,
    options: ConvertOptions,
    steps: str | Iterable[int] = "all",
    *,
    overwrite: bool = False,
    jobs: int = 1,
    cache_dir: str | Path | None = None,
    keep_downloads: bool = False,
    keep_parts: bool = False,
    reporter: BatchReporter | None = None,
) -> TraceResult:
    """``trace`` with its output options already parsed (the command line's way in)."""
    name = hub_model_param(model)
    output = Path(output)
    check_target(output, overwrite)  # before the batch's import of torch: a refusal is instant

    from pythia_tl.batch import BatchRequest, list_work, run_batch

    parts = parts_folder(output)
    request = BatchRequest(
        models=(name,),
        steps=step_spec(steps),
        output_dir=parts,
        options=options,
        jobs=jobs,
        keep_downloads=keep_downloads,
        cache_dir=None if cache_dir is None else Path(cache_dir),
    )
    work = list_work(request)
    _refuse_token_branches(work.items, request)
    summary = run_batch(request, work, reporter)
    unfinished = [r for r in summary.results if r.status in ("failed", "cancelled", "pending")]
    if unfinished:
        first = unfinished[0]
        raise SourceError(
            f"{len(unfinished)} of {len(work.items)} steps not converted ({first.item.revision}: "
            f"{first.reason}); the others are kept in {parts}: run the same trace again to "
            "convert only the rest"
        )
    # From the batch's results, not the files: a step whose weights are byte for byte another
    # step's (a duplicate branch) has no file of its own; its weights are that step's.
    results = [summary.result(item) for item in work.items]
    files = [
        parts / (r.weights_in if r is not None and r.weights_in else item.relative_output)
        for item, r in zip(work.items, results, strict=True)
    ]
    commits = [(r.commit if r is not None else None) or "" for r in results]
    steps_done = [item.step for item in work.items if item.step is not None]
    size, count = _stack(
        files, steps_done, [i.revision for i in work.items], commits, output, overwrite
    )
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    return TraceResult(
        output, name.repo_id, tuple(steps_done), tuple(commits), count, size, summary.counts()
    )


def _refuse_token_branches(items: Sequence[WorkItem], request: BatchRequest) -> None:
    """A trace stacks over training steps: a branch named by a token count has none to record."""
    by_tokens = [item.revision for item in items if item.step is None]
    if by_tokens:
        shown = ", ".join(by_tokens[:3]) + (", ..." if len(by_tokens) > 3 else "")
        raise UsageError(
            Param("steps"),
            f" {request.steps}: a trace stacks its keys over training steps, and "
            f"{items[0].repo_id} has {len(by_tokens)} checkpoint branches named by tokens "
            f"({shown}); name step branches, or convert these with a batch",
        )


def _stack(
    files: list[Path],
    steps: list[int],
    revisions: list[str],
    commits: list[str],
    output: Path,
    overwrite: bool,
) -> tuple[int, int]:
    """Write ``files``' tensors, each stacked over the files, into ``output``; returns (bytes,
    tensors)."""
    from pythia_tl.dtypes import BY_SAFETENSORS
    from pythia_tl.formats.safetensors import TensorEntry
    from pythia_tl.output.metadata import build_trace_metadata, read_output
    from pythia_tl.output.writer import write_safetensors

    infos = [read_output(path) for path in files]
    metadata = build_trace_metadata(infos, steps, revisions, commits)
    layout = infos[0].tensors
    for info in infos[1:]:
        if info.tensors != layout:
            raise SourceError(
                f"{info.path}: holds other tensors (or shapes) than {infos[0].path}; the steps "
                "of a trace must have the same keys"
            )
    entries = [
        TensorEntry(key, BY_SAFETENSORS[dtype], (len(files), *shape))
        for key, (dtype, shape) in layout.items()
    ]

    def stacked() -> Iterator[tuple[str, torch.Tensor]]:
        import torch

        from pythia_tl.output.file_tensors import read_tensor

        for entry in entries:
            out = torch.empty(entry.shape, dtype=entry.dtype.torch)
            for i, path in enumerate(files):
                out[i] = read_tensor(path, entry.name)
            yield entry.name, out

    size = write_safetensors(
        output, entries, stacked(), lambda: metadata, metadata, overwrite=overwrite
    )
    return size, len(entries)
