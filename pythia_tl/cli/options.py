"""Options shared by several commands, declared once.

The output options (``--dtype`` and the weight-processing flags) are added to a command by
``with_output_options``, which hands the command one ``OutputChoice`` instead of seven values:
Typer has no parameter groups, so the decorator extends the command's signature.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from pythia_tl.dtypes import OUTPUT_DTYPE_NAMES
from pythia_tl.mapping.selection import Selection, parse_selection
from pythia_tl.processing import Processing

Command = TypeVar("Command", bound=Callable[..., Any])

# typer needs Optional[...] spelled this way on Python 3.10 for options that may be absent.
Revision = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--revision", metavar="REV", help="Hub branch, tag or commit (default: main)."),
]
Step = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--step",
        metavar="N",
        help="Training step N, i.e. revision stepN, checked against the schedule.",
    ),
]
DType = Annotated[
    str,
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help=f"Output dtype: auto (the source's float dtype), {', '.join(OUTPUT_DTYPE_NAMES)}.",
    ),
]
CacheDir = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--cache-dir", help="huggingface_hub cache folder (default: its usual cache)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]

AllowNonfinite = Annotated[
    bool,
    typer.Option(
        "--allow-nonfinite",
        help="Write NaN and infinity (in the source, or from a cast out of the dtype's range) "
        "instead of refusing them; the metadata records it.",
    ),
]

CheckpointIndex = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--checkpoint-index",
        metavar="N",
        help="Index into the model's checkpoints, as TransformerLens' checkpoint_index "
        "(-1 the last; see 'pythia-tl checkpoints MODEL').",
    ),
]

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


Tensors = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--tensors",
        metavar="GLOBS",
        help="Only these TransformerLens keys: comma-separated globs (embed.W_E, "
        "'blocks.*.attn.W_Q', 'unembed.*'); only the bytes they need are read.",
        rich_help_panel="Selection",
    ),
]
Layers = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--layers",
        metavar="LAYERS",
        help="Only the blocks of these layers: e.g. 0-3,10 (with --tensors, both apply).",
        rich_help_panel="Selection",
    ),
]
KeepDownloads = Annotated[
    bool,
    typer.Option(
        "--keep-downloads",
        help="Download the weights into the huggingface_hub cache, as `hf download` would, "
        "instead of streaming them (default: streamed, nothing of them stored).",
    ),
]


@dataclass(frozen=True)
class OutputChoice:
    """What the output options asked for: the dtype name (or "auto"), the processing and the
    selection of tensors."""

    dtype: str
    processing: Processing
    selection: Selection


_OUTPUT_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("dtype", DType, "auto"),
    ("fold_ln", FoldLN, False),
    ("center_writing_weights", CenterWritingWeights, False),
    ("center_unembed", CenterUnembed, False),
    ("fold_value_biases", FoldValueBiases, False),
    ("process", Process, False),
    ("refactor_factored_attn_matrices", RefactorFactoredAttnMatrices, False),
    ("tensors", Tensors, None),
    ("layers", Layers, None),
)


def with_output_options(command: Command) -> Command:
    """Add the output options (dtype, processing, selection) to ``command``, which takes them as
    ``choice: OutputChoice``."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "choice"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in _OUTPUT_OPTIONS
    ]

    @functools.wraps(command)
    def with_choice(**values: Any) -> Any:
        chosen = {name: values.pop(name) for name, _, _ in _OUTPUT_OPTIONS}
        dtype = chosen.pop("dtype")
        from pythia_tl.mapping.plan import check_dtype  # imports torch: only when run

        check_dtype(dtype)
        selection = parse_selection(chosen.pop("tensors"), chosen.pop("layers"))
        processing = Processing.choose(**chosen)
        return command(**values, choice=OutputChoice(dtype, processing, selection))

    parameters = [
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept),
        *added,
    ]
    with_choice.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_choice.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_choice  # type: ignore[return-value]
