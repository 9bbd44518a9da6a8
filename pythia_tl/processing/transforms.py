"""The processing steps' arithmetic, on one part of the model at a time (TransformerLens layout).

Each function takes a part's tensors by their name within the part, in float32 and owned by the
caller, and changes them in place (rather than building new ones) so that processing the
unembedding of a large model needs no second copy of it. The formulas are TransformerLens'
(``fold_layer_norm``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``);
they are written out here because TransformerLens does them on a whole in-memory state dict,
which is exactly what streaming avoids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pythia_tl.processing.choice import ProcessingStep
from pythia_tl.processing.layout import Part

Tensors = dict[str, torch.Tensor]

# (LayerNorm, its readers as (weight, bias, d_model axis of the weight)) within a part.
BLOCK_LAYER_NORMS: tuple[tuple[str, tuple[tuple[str, str, int], ...]], ...] = (
    (
        "ln1",
        (("attn.W_Q", "attn.b_Q", 1), ("attn.W_K", "attn.b_K", 1), ("attn.W_V", "attn.b_V", 1)),
    ),
    ("ln2", (("mlp.W_in", "mlp.b_in", 0),)),
)
HEAD_LAYER_NORMS: tuple[tuple[str, tuple[tuple[str, str, int], ...]], ...] = (
    ("ln_final", (("unembed.W_U", "unembed.b_U", 0),)),
)
# What writes to the residual stream; d_model is the last axis of each of these weights.
BLOCK_WRITERS = (("attn.W_O", "attn.b_O"), ("mlp.W_out", "mlp.b_out"))


def process_part(part: Part, tensors: Tensors, steps: Sequence[ProcessingStep]) -> None:
    """Apply ``steps`` (in TransformerLens' order) to one part's tensors, in place.

    A folded LayerNorm's tensors are removed from ``tensors``.
    """
    for step in steps:
        if part == "embed" and step == "center_writing_weights":
            _center_last_axis(tensors["embed.W_E"])
        elif part == "block" and step == "fold_ln":
            for ln, readers in BLOCK_LAYER_NORMS:
                fold_layer_norm(tensors, ln, readers)
        elif part == "block" and step == "center_writing_weights":
            for weight, bias in BLOCK_WRITERS:
                _center_last_axis(tensors[weight])
                _center_last_axis(tensors[bias])
        elif part == "block" and step == "fold_value_biases":
            fold_value_biases(tensors, recentre="center_writing_weights" in steps)
        elif part == "head" and step == "fold_ln":
            for ln, readers in HEAD_LAYER_NORMS:
                fold_layer_norm(tensors, ln, readers)
        elif part == "head" and step == "center_unembed":
            # Softmax ignores a constant added to every logit: centre over the vocabulary.
            _center_last_axis(tensors["unembed.W_U"])
            _center_last_axis(tensors["unembed.b_U"])


def fold_layer_norm(tensors: Tensors, ln: str, readers: Sequence[tuple[str, str, int]]) -> None:
    """Fold LayerNorm ``ln`` into every (weight, bias, d_model axis) that reads it; remove it."""
    scale, shift = tensors.pop(f"{ln}.w"), tensors.pop(f"{ln}.b")
    for weight_key, bias_key, axis in readers:
        weight = tensors[weight_key]
        # LN's output is normalised * w + b: its bias reaches the reader through the weight as it
        # was, before the weight absorbs w.
        tensors[bias_key] = tensors[bias_key] + torch.tensordot(shift, weight, dims=([0], [axis]))
        shape = [1] * weight.ndim
        shape[axis] = -1
        weight.mul_(scale.view(shape))
        # The normalised input has zero mean over d_model, so the weight's mean over d_model
        # contributes nothing; TransformerLens removes it.
        weight.sub_(weight.mean(axis, keepdim=True))


def fold_value_biases(tensors: Tensors, recentre: bool) -> None:
    """Move b_V into b_O: attention patterns sum to 1, so b_V @ W_O is added at every position.

    ``recentre``: when the writing weights were centred, b_O is centred again afterwards, as
    TransformerLens 3.x does (with a centred W_O this only removes rounding).
    """
    b_v, w_o = tensors["attn.b_V"], tensors["attn.W_O"]
    b_o = tensors["attn.b_O"] + torch.einsum("hd,hdm->m", b_v, w_o)
    if recentre:
        b_o -= b_o.mean()
    tensors["attn.b_O"] = b_o
    tensors["attn.b_V"] = torch.zeros_like(b_v)


def _center_last_axis(tensor: torch.Tensor) -> None:
    tensor.sub_(tensor.mean(-1, keepdim=True))
