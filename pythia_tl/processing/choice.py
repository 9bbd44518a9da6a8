"""Which of TransformerLens' weight-processing steps to apply, and in which order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pythia_tl.converters.tl_config import NormalizationType
from pythia_tl.errors import UsageError

ProcessingStep = Literal["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]

# HookedTransformer.from_pretrained's order. It matters: LayerNorm is folded into W_U before W_U
# is centred, and value biases are folded through W_O after W_O is centred.
TL_ORDER: tuple[ProcessingStep, ...] = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
)

FLAGS: dict[ProcessingStep, str] = {
    "fold_ln": "--fold-ln",
    "center_writing_weights": "--center-writing-weights",
    "center_unembed": "--center-unembed",
    "fold_value_biases": "--fold-value-biases",
}

REFACTOR_REFUSAL = (
    "--refactor-factored-attn-matrices: refused; with rotary embeddings the attention score "
    "depends on the query and key positions, so W_Q and W_K cannot be refactored without "
    "changing the model (TransformerLens refuses it too)"
)


@dataclass(frozen=True)
class Processing:
    """The processing steps chosen; the default chooses none (raw weights)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    @classmethod
    def all(cls) -> Processing:
        """What ``HookedTransformer.from_pretrained`` applies by default."""
        return cls(True, True, True, True)

    @classmethod
    def from_flags(
        cls,
        *,
        process: bool = False,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
    ) -> Processing:
        """The command-line choice: ``process`` means all four; the others add to it."""
        if refactor_factored_attn_matrices:
            raise UsageError(REFACTOR_REFUSAL)
        if process:
            return cls.all()
        return cls(fold_ln, center_writing_weights, center_unembed, fold_value_biases)

    @property
    def steps(self) -> tuple[ProcessingStep, ...]:
        """The chosen steps in TransformerLens' order (what the output's metadata records)."""
        return tuple(step for step in TL_ORDER if getattr(self, step))

    @property
    def normalization_type(self) -> NormalizationType:
        """Once folded, LayerNorm keeps only its centring and scaling: TL's "LNPre"."""
        return "LNPre" if self.fold_ln else "LN"


NO_PROCESSING = Processing()
