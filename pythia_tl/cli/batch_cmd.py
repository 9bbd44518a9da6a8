"""``pythia-tl batch``: many models and steps in one resumable, shardable command."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from pythia_tl.cli.hub_model import hub_model
from pythia_tl.cli.json_output import ReportedFailure, print_json
from pythia_tl.cli.options import (
    AllowNonfinite,
    CacheDir,
    Json,
    KeepDownloads,
    OutputChoice,
    Quiet,
    with_output_options,
)
from pythia_tl.cli.tables import print_table
from pythia_tl.hub.quotas import WINDOW_SECONDS
from pythia_tl.text import printable

if TYPE_CHECKING:
    from pythia_tl.batch import BatchSummary, RevisionResult
    from pythia_tl.batch.dry_run import BatchCost


@with_output_options
def batch(
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL",
            help="Hub repo ids (EleutherAI/pythia-70m) or short names.",
            show_default=False,
        ),
    ],
    steps: Annotated[
        str,
        typer.Option(
            "--steps",
            metavar="SPEC",
            help="'all', or a comma list of steps and inclusive ranges FIRST-LAST[:STRIDE] "
            "(e.g. 0,1,2,4,1000-143000:10000), taken from each model's schedule; 'all' also "
            "takes branches named by a token count (such as 240b_tokens) of a repository "
            "outside the Pythia suite.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Output folder: DIR/<model-name>/<revision>.safetensors."
        ),
    ],
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Revisions converted at once (at least 1).")
    ] = 1,
    shard: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--shard",
            metavar="K/N",
            help="K/N: convert only the K-th (from 1) of N disjoint parts of the work list.",
        ),
    ] = None,
    keep_downloads: KeepDownloads = False,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop at the first failed revision.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Convert nothing: list each revision's commit, the bytes it would fetch and "
            "write, and which are duplicates, missing or done (from listings and headers only).",
        ),
    ] = False,
    recheck: Annotated[
        bool,
        typer.Option(
            "--recheck",
            help="Hash every existing output again (default: only those whose size, mtime or "
            "inode differ from the summary's record); one that changed is converted again.",
        ),
    ] = False,
    allow_nonfinite: AllowNonfinite = False,
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    json_output: Json = False,
    *,
    choice: OutputChoice,
) -> None:
    """Convert many models and training steps; rerunning skips every output already done."""
    from pythia_tl.batch import BatchRequest, list_work, parse_shard, parse_step_spec, run_batch
    from pythia_tl.engine.options import ConvertOptions

    request = BatchRequest(
        models=tuple(hub_model(model, "batch") for model in models),
        steps=parse_step_spec(steps),
        output_dir=output,
        options=ConvertOptions(
            dtype=choice.dtype,
            processing=choice.processing,
            selection=choice.selection,
            allow_nonfinite=allow_nonfinite,
        ),
        jobs=jobs,
        shard=parse_shard(shard) if shard is not None else None,
        keep_downloads=keep_downloads,
        fail_fast=fail_fast,
        cache_dir=cache_dir,
        recheck=recheck,
    )
    work = list_work(request)
    if dry_run:
        from pythia_tl.batch.dry_run import estimate

        _print_cost(estimate(request, work), json_output)
        return
    from huggingface_hub.utils import disable_progress_bars

    # Per-file download bars from several threads would garble the batch's own output.
    disable_progress_bars()
    with _LineReporter(quiet or json_output) as reporter:
        summary = run_batch(request, work, reporter)
    if not (quiet or json_output):  # --json: the summary's entries say it
        for line in _duplicate_warnings(summary):
            print(printable(line), file=sys.stderr)
    if json_output:  # the summary as written: this run's counts, and the folder's
        from pythia_tl.batch.summary import read_entries

        print_json(summary.to_json(read_entries(summary.path)))
    elif not quiet:
        print(printable(_totals(summary, work.work_list_size)), file=sys.stderr)
    failed = summary.failed
    if failed:
        first = failed[0]
        raise ReportedFailure(
            f"{len(failed)} of {_revisions(len(summary.items))} failed, first {first.item.label}: "
            f"{first.reason} (see {summary.path})"
        )


def _print_cost(cost: BatchCost, json_output: bool) -> None:
    if json_output:
        print_json(cost.to_json())
        return
    rows = [
        [
            r.item.label,
            r.commit or "-",
            r.status,
            decimal(r.fetch_bytes),
            decimal(r.write_bytes),
            f"= {r.duplicate_of}" if r.duplicate_of else (r.reason or ""),
        ]
        for r in cost.revisions
    ]
    columns = ["revision", "commit", "status", "fetch", "write", "note"]
    print_table(Console(), columns, rows, title="dry run: nothing converted")
    print(
        f"total: fetch {decimal(cost.fetch_bytes)}, write {decimal(cost.write_bytes)}; "
        f"{cost.resolve_requests} resolve and {cost.api_requests} API requests"
    )
    if cost.exceeds:
        print(
            printable(
                f"note: more requests than the Hub allows in one {WINDOW_SECONDS // 60}-minute "
                f"window for: {', '.join(cost.exceeds)} (shards behind one address, or with one "
                "token, share a window; the run waits out each limit)"
            )
        )


def _duplicate_warnings(summary: BatchSummary) -> list[str]:
    """One line per group of revisions that hold another's weights (and got no file)."""
    groups: dict[tuple[str, str], list[RevisionResult]] = {}
    for result in summary.results:
        if result.status == "duplicate" and result.duplicate_of is not None:
            groups.setdefault((result.item.model.name, result.duplicate_of), []).append(result)
    lines = []
    for (model, first), members in groups.items():
        names = ", ".join(member.item.revision for member in members)
        one = len(members) == 1
        lines.append(
            f"warning: {model} {names} {'holds' if one else 'hold'} the same weight files as "
            f"{first} (sha256): no file written for {'it' if one else 'them'}; "
            f"{members[0].weights_in} holds the weights (see {summary.path.name})"
        )
    return lines


def _totals(summary: BatchSummary, work_list_size: int) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts().items() if n)
    scope = (
        f"{len(summary.items)} of {_revisions(work_list_size)} (this shard)"
        if len(summary.items) != work_list_size
        else _revisions(work_list_size)
    )
    return f"batch: {scope}: {counts or 'nothing to do'}; summary in {summary.path}"


def _revisions(count: int) -> str:
    return f"{count} revision{'' if count == 1 else 's'}"


def _line(result: RevisionResult) -> str:
    label = result.item.label
    if result.status == "converted":
        size = decimal(result.bytes or 0)
        note = f"; {result.reason}" if result.reason else ""
        return f"converted {label} ({size} in {result.seconds:.1f} s){note}"
    return f"{result.status} {label}: {result.reason}"


class _LineReporter:
    """One overall bar on a terminal (revisions done / total, bytes written) and one stderr line
    per finished revision; nothing at all when silent."""

    def __init__(self, silent: bool) -> None:
        self._silent = silent
        self._console = Console(file=sys.stderr)
        self._lock = threading.Lock()
        self._written = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _LineReporter:
        if not self._silent and self._console.is_terminal:
            self._progress = Progress(
                TextColumn("batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("revisions, {task.fields[written]} written"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def started(self, total: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task("batch", total=total, written=decimal(0))

    def wrote(self, nbytes: int) -> None:
        with self._lock:
            self._written += nbytes
            written = self._written
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, written=decimal(written))

    def finished(self, result: RevisionResult) -> None:
        if self._silent:
            return
        line = printable(_line(result))
        with self._lock:
            if self._progress is not None and self._task is not None:
                self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
                self._progress.advance(self._task)
            else:
                print(line, file=sys.stderr, flush=True)
