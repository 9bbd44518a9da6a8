"""``pythia-tl checkpoints``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pythia_tl.cli.hub_model import hub_model
from pythia_tl.cli.json_output import print_json
from pythia_tl.cli.options import Json
from pythia_tl.cli.tables import print_table

_ORIGINS = {"hub": "the Hub's branches", "schedule": "the known schedule (Hub not reachable)"}


def checkpoints(
    model: Annotated[
        str, typer.Argument(help="A Hub repo id (EleutherAI/pythia-70m) or a short name.")
    ],
    json_output: Json = False,
) -> None:
    """List a model's training checkpoints: index, step, tokens seen and commit.

    From the Hub's step branches when it answers, else from Pythia's known schedule. The index
    is what --checkpoint-index takes.
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
    title = f"{listing.model.repo_id}: {len(rows)} checkpoints, from {_ORIGINS[listing.origin]}"
    cells = [
        [
            str(row["index"]),
            str(row["step"]),
            str(row["revision"]),
            f"{row['tokens']:,}",
            str(row["commit"] or "-"),
        ]
        for row in rows
    ]
    columns = ["index", "step", "revision", "tokens seen", "commit"]
    print_table(Console(), columns, cells, title=title)
