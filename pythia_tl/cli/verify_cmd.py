"""``pythia-tl verify``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pythia_tl.cli.errors import flag
from pythia_tl.cli.json_output import ReportedFailure, print_json
from pythia_tl.cli.options import CacheDir, CheckpointIndex, Json, Quiet, Step
from pythia_tl.cli.progress import byte_progress
from pythia_tl.errors import PythiaTLError
from pythia_tl.text import printable

if TYPE_CHECKING:
    from pythia_tl.verify import VerifyReport


def verify(
    file: Annotated[Path, typer.Argument(help="A safetensors file written by pythia-tl.")],
    source: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(
            help="The source to compare with (default: the one recorded in the file): a "
            "folder, a Hub repo id or a short name.",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--revision",
            metavar="REV",
            help="Hub branch, tag or commit of the source (default: the commit recorded in "
            "the file).",
        ),
    ] = None,
    step: Step = None,
    checkpoint_index: CheckpointIndex = None,
    cache_dir: CacheDir = None,
    no_source: Annotated[
        bool,
        typer.Option("--no-source", help="Check integrity and metadata only, not the source."),
    ] = False,
    logits: Annotated[
        bool,
        typer.Option(
            "--logits",
            help="Also compare log-probabilities with transformers' model of the source "
            "(needs transformers: the package's verify extra).",
        ),
    ] = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Check a converted file: integrity, metadata, every tensor against its source."""
    from pythia_tl.verify import VerifyOptions, verify_file

    options = VerifyOptions(
        source=source,
        revision=revision,
        step=step,
        checkpoint_index=checkpoint_index,
        cache_dir=cache_dir,
        check_source=not no_source,
        logits=logits,
    )
    with byte_progress(printable(f"verifying {file.name}"), quiet or json_output) as bar:
        report = verify_file(file, options, on_bytes=bar)
    if json_output:
        print_json(report.to_json(flag))
    elif not quiet:
        _print(report)
    try:
        report.raise_if_failed()
    except PythiaTLError as exc:
        raise ReportedFailure(*exc.parts) from None


def _print(report: VerifyReport) -> None:
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        detail = printable(check.describe(flag))
        print(f"{check.status:<7}  {check.name:<{width}}  {detail}")
    if report.ok:
        print(printable(f"verified {report.file}"))
