"""A pythia-tl output in TransformerLens 4 (or transformers): export, then boot.

    pythia-tl export pythia-70m-step1000.safetensors -o pythia-70m-step1000-hf
    python examples/export_for_transformer_lens_4.py pythia-70m-step1000-hf

TransformerLens 4 boots models from a Hugging Face folder with ``TransformerBridge``
(TransformerLens 3.x has the same bridge); transformers loads the same folder directly.
"""

from __future__ import annotations

import sys

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPTNeoXForCausalLM

folder = sys.argv[1]
bridge = TransformerBridge.boot_transformers(folder, device="cpu", dtype=torch.float32)
tokens = bridge.to_tokens("the model was a layer of the head")
hf = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float32)
difference = (bridge(tokens) - hf(tokens).logits).abs().max().item()
print(f"TransformerBridge and transformers on {folder}: largest logit difference {difference:.2e}")
