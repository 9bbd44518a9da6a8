"""TransformerLens' weight-processing passes, and which of them a conversion applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pythia_tl.errors import Param, UsageError
from pythia_tl.mapping.tl_config import NormalizationType

ProcessingPass = Literal["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]

# HookedTransformer.from_pretrained's order. It matters: LayerNorm is folded into W_U before W_U
# is centred, and value biases are folded through W_O after W_O is centred.
TL_ORDER: tuple[ProcessingPass, ...] = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
)


@dataclass(frozen=True)
class Processing:
    """The passes chosen; the default chooses none (raw weights)."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    @classmethod
    def all(cls) -> Processing:
        """What ``HookedTransformer.from_pretrained`` applies by default."""
        return cls(True, True, True, True)

    @classmethod
    def choose(
        cls,
        *,
        process: bool = False,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
    ) -> Processing:
        """``process`` means all four; the others add to it. Refactoring the factored attention
        matrices is refused: it is invalid under rotary embeddings."""
        if refactor_factored_attn_matrices:
            raise UsageError(
                Param("refactor_factored_attn_matrices"),
                ": refused; with rotary embeddings the attention score depends on the query and "
                "key positions, so W_Q and W_K cannot be refactored without changing the model "
                "(TransformerLens refuses it too)",
            )
        if process:
            return cls.all()
        return cls(fold_ln, center_writing_weights, center_unembed, fold_value_biases)

    @property
    def passes(self) -> tuple[ProcessingPass, ...]:
        """The chosen passes in TransformerLens' order (what the output's metadata records)."""
        return tuple(name for name in TL_ORDER if getattr(self, name))

    @property
    def normalization_type(self) -> NormalizationType:
        """Once folded, LayerNorm keeps only its centring and scaling: TL's "LNPre"."""
        return "LNPre" if self.fold_ln else "LN"


NO_PROCESSING = Processing()
