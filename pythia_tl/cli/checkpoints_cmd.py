"""``pythia-tl checkpoints``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pythia_tl.cli.hub_model import hub_model
from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import Json
from pythia_tl.cli.tables import print_table

_ORIGINS = {
    "hub": "the Hub's branches",
    "schedule": "the known schedule (Hub not reachable)",
    "schedule+hub": "the known schedule (TransformerLens' order), commits from the Hub",
}


def checkpoints(
    model: Annotated[
        str, typer.Argument(help="A Hub repo id (EleutherAI/pythia-70m) or a short name.")
    ],
    json_output: Json = False,
) -> None:
    """List a model's training checkpoints: index, step, tokens seen and commit.

    A Pythia model lists its known schedule, in TransformerLens' order, with the commit of each
    branch on the Hub and the branches it lacks marked missing (never renumbered); any other
    repository lists its checkpoint branches (step<N>, or token counts such as 240b_tokens).
    The index is what --checkpoint-index takes and what load() sets as checkpoint_index.
    """
    from pythia_tl.source.schedule import hub_checkpoints

    listing = hub_checkpoints(hub_model(model, "checkpoints"))
    rows = [
        {
            "index": checkpoint.index,
            "step": checkpoint.step,
            "revision": checkpoint.revision,
            "tokens": checkpoint.tokens,
            "commit": checkpoint.commit,
            "missing": checkpoint.missing,
        }
        for checkpoint in listing.checkpoints
    ]
    if json_output:
        print_json(
            {
                "model": listing.model.repo_id,
                "origin": listing.origin,
                "count": len(rows),
                "checkpoints": rows,
            }
        )
        return
    missing = sum(bool(row["missing"]) for row in rows)
    title = f"{listing.model.repo_id}: {len(rows)} checkpoints, from {_ORIGINS[listing.origin]}"
    if missing:
        title += f"; {missing} missing on the Hub"
    cells = [
        [
            str(row["index"]),
            "-" if row["step"] is None else str(row["step"]),
            str(row["revision"]),
            "-" if row["tokens"] is None else f"{row['tokens']:,}",
            "missing" if row["missing"] else str(row["commit"] or "-"),
        ]
        for row in rows
    ]
    columns = ["index", "step", "revision", "tokens seen", "commit"]
    print_table(Console(), columns, cells, title=title)
