"""Load a pythia-tl output into TransformerLens 2.x or 3.x and run it.

    pip install "transformer-lens<4"
    python examples/load_in_transformer_lens.py pythia-70m-step1000.safetensors

The file carries its own TransformerLens config, so no Hub access is needed to build the model.
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig


def load(path: str) -> HookedTransformer:
    with safe_open(path, framework="pt") as f:
        cfg = json.loads(f.metadata()["tl_config"])
    cfg["tokenizer_name"] = None  # build offline; set it back to fetch the tokenizer
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    state_dict = load_file(path)
    # strict=False: the model builds its own attention masks and rotary tables (buffers).
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos")) for k in missing), missing
    return model


if __name__ == "__main__":
    model = load(sys.argv[1])
    tokens = torch.arange(8).unsqueeze(0) % model.cfg.d_vocab
    logits = model(tokens)
    print(
        f"{model.cfg.model_name}: logits {tuple(logits.shape)}, first {logits[0, -1, :5].tolist()}"
    )
