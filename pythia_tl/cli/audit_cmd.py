"""``pythia-tl audit``: checkpoint anomalies of a suite, from the Hub's listings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.filesize import decimal

from pythia_tl.cli.hub_model import hub_model
from pythia_tl.cli.json_output import ReportedFailure, print_json
from pythia_tl.cli.options import CacheDir, Json
from pythia_tl.cli.tables import print_table
from pythia_tl.text import printable

if TYPE_CHECKING:
    from pythia_tl.audit.findings import AuditReport


def audit(
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
            help="'all', or a comma list of steps and inclusive ranges FIRST-LAST[:STRIDE], "
            "taken from each model's schedule (main is always audited).",
        ),
    ] = "all",
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also fingerprint every tensor's data by small byte ranges (a few KB per "
            "tensor), to find revisions whose files differ but whose tensors are the same.",
        ),
    ] = False,
    cache_dir: CacheDir = None,
    json_output: Json = False,
) -> None:
    """Find checkpoint anomalies: missing or incomplete branches, revisions identical to
    another (or to main), sharing weight files, or (--deep) holding the same tensors.

    Reads the Hub's listings only (one API call per revision, no weight bytes; --deep adds a
    few KB per tensor). Exit status 0 when nothing is found, 1 when anything is.
    """
    from pythia_tl.audit.run import audit_models
    from pythia_tl.batch.step_spec import parse_step_spec

    spec = parse_step_spec(steps)
    report = audit_models(
        [hub_model(model, "audit") for model in models], spec, deep=deep, cache_dir=cache_dir
    )
    if json_output:
        print_json(report.to_json())
    else:
        _print_report(report)
    if report.exit_code:
        anomalies = report.anomalies
        unexplained = sum(not f.known for f in anomalies)
        raise ReportedFailure(
            f"{len(anomalies)} of {len(report.findings)} revisions have anomalies "
            f"({unexplained} not in a known report)"
        )


def _print_report(report: AuditReport) -> None:
    cells = [
        [
            finding.ref.repo_id,
            finding.ref.revision,
            "-" if finding.index is None else str(finding.index),
            finding.status,  # the JSON's word
            finding.describe(),
            ", ".join(finding.known) or "-",
        ]
        for finding in report.findings
    ]
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    title = f"audit of {', '.join(report.models)} (steps {report.steps}): {counts}"
    columns = ["model", "revision", "index", "status", "detail", "known report"]
    print_table(Console(), columns, cells, title=title)
    if report.deep:
        print(f"fingerprints: {decimal(report.fingerprint_bytes)} of tensor data fetched")
        for where, why in report.not_fingerprinted.items():
            print(printable(f"not fingerprinted: {where}: {why}"))
