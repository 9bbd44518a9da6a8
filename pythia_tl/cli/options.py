"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pythia_tl.plan import DTYPES

# typer needs Optional[...] spelled this way on Python 3.10 for options that may be absent.
Revision = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--revision", help="Hub branch, tag or commit (default: main)."),
]
Step = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--step", help="Training step N, i.e. revision stepN, checked against the schedule."
    ),
]
DType = Annotated[
    str,
    typer.Option(
        "--dtype",
        help=f"Output dtype: auto (the source's float dtype), {', '.join(DTYPES)}.",
    ),
]
CacheDir = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--cache-dir", help="huggingface_hub cache folder (default: its usual cache)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]

# Weight processing: shared by every command that writes or plans an output.
_PROCESSING_PANEL = "Weight processing (as TransformerLens' from_pretrained)"
FoldLN = Annotated[
    bool,
    typer.Option(
        "--fold-ln",
        help="Fold each LayerNorm into the weights that read it; no ln tensors are written and "
        "normalization_type becomes LNPre.",
        rich_help_panel=_PROCESSING_PANEL,
    ),
]
CenterWritingWeights = Annotated[
    bool,
    typer.Option(
        "--center-writing-weights",
        help="Subtract the mean over d_model from W_E, W_O, W_out, b_O and b_out.",
        rich_help_panel=_PROCESSING_PANEL,
    ),
]
CenterUnembed = Annotated[
    bool,
    typer.Option(
        "--center-unembed",
        help="Subtract W_U's and b_U's mean over the vocabulary (log-probabilities unchanged).",
        rich_help_panel=_PROCESSING_PANEL,
    ),
]
FoldValueBiases = Annotated[
    bool,
    typer.Option(
        "--fold-value-biases",
        help="Fold b_V into b_O through W_O; b_V becomes zero.",
        rich_help_panel=_PROCESSING_PANEL,
    ),
]
Process = Annotated[
    bool,
    typer.Option(
        "--process",
        help="All four, in TransformerLens' order: the weights from_pretrained gives by default.",
        rich_help_panel=_PROCESSING_PANEL,
    ),
]
# Hidden: accepted only to refuse it with the reason, since TransformerLens users may reach for it.
RefactorFactoredAttnMatrices = Annotated[
    bool,
    typer.Option("--refactor-factored-attn-matrices", hidden=True),
]
