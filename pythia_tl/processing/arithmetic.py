"""The processing passes' arithmetic, on one part of the model at a time (TransformerLens layout).

Each function takes a part's tensors by their name within the part, owned by the caller, and
changes them in place (rather than building new ones). The formulas are TransformerLens'
(``fold_layer_norm``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``);
they are written out here because TransformerLens does them on a whole in-memory state dict,
which is exactly what streaming avoids.

The arithmetic is float32 throughout. A block's tensors come in as float32 copies. The
embedding and the unembedding, the largest tensors by far, come in as converted (float16 for a
float16 output) and are processed in chunks of the vocabulary, each chunk copied to float32 and
its result written back over the input: no float32 copy of a whole one is ever held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from pythia_tl.processing.passes import ProcessingPass
from pythia_tl.processing.plan import Part

Tensors = dict[str, torch.Tensor]

# The weights processed in chunks, in the dtype they come in; everything else comes as float32.
CHUNKED = ("embed.W_E", "unembed.W_U")
# Elements of one chunk (8 MiB in float32), whatever the dtype, so that a float16 and a float32
# conversion round the same float32 results.
CHUNK_ELEMENTS = 1 << 21

# (LayerNorm, its readers as (weight, bias)) within a block. d_model is the second-to-last axis
# of each weight: (head, d_model, d_head) or (d_model, d_mlp).
BLOCK_LAYER_NORMS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("ln1", (("attn.W_Q", "attn.b_Q"), ("attn.W_K", "attn.b_K"), ("attn.W_V", "attn.b_V"))),
    ("ln2", (("mlp.W_in", "mlp.b_in"),)),
)
# What writes to the residual stream; d_model is the last axis of each of these weights.
BLOCK_WRITERS = (("attn.W_O", "attn.b_O"), ("mlp.W_out", "mlp.b_out"))


def process_part(part: Part, tensors: Tensors, passes: Sequence[ProcessingPass]) -> None:
    """Apply ``passes`` (in TransformerLens' order) to one part's tensors, in place.

    A folded LayerNorm's tensors are removed from ``tensors``.
    """
    if part == "embed":
        if "center_writing_weights" in passes:
            center_embedding(tensors["embed.W_E"])
    elif part == "head":
        process_head(tensors, fold_ln="fold_ln" in passes, center="center_unembed" in passes)
    else:
        for name in passes:
            if name == "fold_ln":
                for ln, readers in BLOCK_LAYER_NORMS:
                    fold_layer_norm(tensors, ln, readers)
            elif name == "center_writing_weights":
                for weight, bias in BLOCK_WRITERS:
                    _center_last_axis(tensors[weight])
                    _center_last_axis(tensors[bias])
            elif name == "fold_value_biases":
                fold_value_biases(tensors, recentre="center_writing_weights" in passes)


def center_embedding(w_e: torch.Tensor) -> None:
    """Subtract from each token's embedding its mean over d_model, a chunk of tokens at a time."""
    rows = max(1, CHUNK_ELEMENTS // w_e.shape[1])
    for start in range(0, w_e.shape[0], rows):
        chunk = _float32_copy(w_e[start : start + rows])
        _center_last_axis(chunk)
        w_e[start : start + rows] = chunk


def process_head(tensors: Tensors, *, fold_ln: bool, center: bool) -> None:
    """Fold ``ln_final`` into the unembedding (``fold_ln``), then centre the unembedding over
    the vocabulary (``center``), as TransformerLens does; a chunk of vocabulary columns of W_U
    at a time. ``ln_final`` is removed when folded."""
    w_u, b_u = tensors["unembed.W_U"], tensors["unembed.b_U"]
    scale = shift = None
    if fold_ln:
        scale, shift = tensors.pop("ln_final.w"), tensors.pop("ln_final.b")
    # Centring subtracts each row's mean over the vocabulary, which no chunk of columns has on
    # its own: it comes from a first pass, computed from W_U as it is before folding.
    row_means = _folded_row_means(w_u, scale) if center else None
    for columns in _column_chunks(w_u):
        chunk = _float32_copy(w_u[:, columns])
        if scale is not None and shift is not None:
            # LN's output is normalised * w + b: its bias reaches the logits through W_U as it
            # was, before W_U absorbs w. The normalised input has zero mean over d_model, so
            # W_U's mean over d_model contributes nothing; TransformerLens removes it.
            b_u[columns] += shift @ chunk
            chunk.mul_(scale[:, None])
            chunk.sub_(chunk.mean(0, keepdim=True))
        if row_means is not None:
            # Softmax ignores a constant added to every logit.
            chunk.sub_(row_means[:, None])
        w_u[:, columns] = chunk
    if center:
        b_u.sub_(b_u.mean())


def fold_layer_norm(tensors: Tensors, ln: str, readers: Sequence[tuple[str, str]]) -> None:
    """Fold LayerNorm ``ln`` into every (weight, bias) that reads it; remove it.

    d_model is the second-to-last axis of each weight (so ``shift @ weight`` contracts it, with
    no copy of the weight).
    """
    scale, shift = tensors.pop(f"{ln}.w"), tensors.pop(f"{ln}.b")
    for weight_key, bias_key in readers:
        weight = tensors[weight_key]
        # LN's output is normalised * w + b: its bias reaches the reader through the weight as it
        # was, before the weight absorbs w.
        tensors[bias_key] = tensors[bias_key] + shift @ weight
        weight.mul_(scale[:, None])
        # The normalised input has zero mean over d_model, so the weight's mean over d_model
        # contributes nothing; TransformerLens removes it.
        weight.sub_(weight.mean(-2, keepdim=True))


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


def _folded_row_means(w_u: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Each row's mean over the vocabulary of W_U after folding in ``scale`` (when given) and
    centring each column over d_model, computed from W_U before folding (in one pass).

    Folded, W'[i, v] = s_i W[i, v] - c_v with c_v = mean_i s_i W[i, v]; so with m_i the row
    means of W, the row means of W' are s_i m_i - mean_v c_v, and mean_v c_v = mean_i s_i m_i.
    """
    sums = torch.zeros(w_u.shape[0], dtype=torch.float64)
    for columns in _column_chunks(w_u):
        sums += _float32_copy(w_u[:, columns]).sum(1)
    means = sums / w_u.shape[1]
    if scale is not None:
        means *= scale
        means -= means.mean()
    return means.to(torch.float32)


def _column_chunks(weight: torch.Tensor) -> Iterator[slice]:
    columns = max(1, CHUNK_ELEMENTS // weight.shape[0])
    for start in range(0, weight.shape[1], columns):
        yield slice(start, start + columns)


def _float32_copy(view: torch.Tensor) -> torch.Tensor:
    # Always a contiguous copy, even of float32: the results must not depend on the input's
    # dtype or layout, and the caller writes them back over the input.
    return torch.empty(view.shape, dtype=torch.float32).copy_(view)


def _center_last_axis(tensor: torch.Tensor) -> None:
    tensor.sub_(tensor.mean(-1, keepdim=True))
