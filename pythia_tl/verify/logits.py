"""Do the file and the source compute the same log-probabilities?

The source runs through transformers' ``GPTNeoXForCausalLM`` (eager attention), the file through
pythia-tl's TransformerLens forward pass (``pythia_tl.verify.tl_forward``), both in float32 on a few
fixed random token sequences, and the largest difference of their log-probabilities must stay
within a stated tolerance. For an unprocessed file transformers gets the source's weights rounded
to the file's dtype, so both sides hold the same numbers and only float32 summation order
differs. A processed file's weights were computed in float32 and then rounded, so its tolerance
grows with the coarseness of its dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pythia_tl.errors import Param, UsageError
from pythia_tl.output.file_tensors import FileTensors
from pythia_tl.output.metadata import ConversionRecord
from pythia_tl.verify.report import Check
from pythia_tl.verify.tl_forward import tl_logits

N_SEQUENCES = 4
SEQUENCE_LENGTH = 64
TOKEN_SEED = 0
UNPROCESSED_TOLERANCE = 1e-3
PROCESSED_TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1.5e-1}


def require_transformers() -> None:
    """Refuse the logits check up front when transformers is not installed."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError(
            Param("logits", True), " needs transformers: pip install 'pythia-tl[verify]'"
        ) from None


def tolerance_for(recorded: ConversionRecord) -> float:
    if recorded.processing.passes:
        return PROCESSED_TOLERANCE[recorded.dtype.name]
    return UNPROCESSED_TOLERANCE


def check_logits(
    path: Path, recorded: ConversionRecord, recorded_keys: Iterable[str], source_folder: Path
) -> Check:
    tokens = fixed_tokens(recorded.config.d_vocab, recorded.config.n_ctx)
    expected = torch.log_softmax(_source_logits(source_folder, recorded, tokens), dim=-1)
    weights = FileTensors(path, recorded_keys)
    actual = torch.log_softmax(tl_logits(weights, recorded.tl_config, tokens), dim=-1)
    difference = float((actual - expected).abs().max())
    tolerance = tolerance_for(recorded)
    shape = f"{tokens.shape[0]} sequences x {tokens.shape[1]} tokens"
    data: dict[str, Any] = {
        "max_logprob_difference": difference,
        "tolerance": tolerance,
        "sequences": tokens.shape[0],
        "tokens_per_sequence": tokens.shape[1],
    }
    detail = (
        f"{shape}: largest log-probability difference from transformers' GPTNeoXForCausalLM "
        f"{difference:.3g} (tolerance {tolerance:g})"
    )
    # Written so that a NaN difference fails.
    if not difference <= tolerance:
        return Check.failed("logits", detail, **data)
    return Check.ok("logits", detail, **data)


def fixed_tokens(d_vocab: int, n_ctx: int) -> torch.Tensor:
    """The same token sequences every time (seeded), ``[N_SEQUENCES, <= SEQUENCE_LENGTH]``."""
    generator = torch.Generator().manual_seed(TOKEN_SEED)
    length = min(SEQUENCE_LENGTH, n_ctx)
    return torch.randint(0, d_vocab, (N_SEQUENCES, length), generator=generator)


def _source_logits(folder: Path, recorded: ConversionRecord, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as transformers_logging

    # Its load report and progress bar would clutter our output; both are restored afterwards.
    verbosity = transformers_logging.get_verbosity()
    bar_shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        model = GPTNeoXForCausalLM.from_pretrained(
            folder, attn_implementation="eager", dtype=torch.float32
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bar_shown:
            transformers_logging.enable_progress_bar()
    with torch.inference_mode():
        if not recorded.processing.passes:
            # The file holds the source's weights rounded to its dtype: give transformers the
            # same. Parameters only: its buffers (the rotary frequencies) stay float32.
            for parameter in model.parameters():
                parameter.copy_(parameter.to(recorded.dtype.torch))
        logits: torch.Tensor = model.eval()(input_ids=tokens).logits
    return logits.to(torch.float32)
