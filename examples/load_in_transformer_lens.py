"""Load a pythia-tl output into TransformerLens 3.x and run it on text.

    pip install "pythia-tl[tl]"
    python examples/load_in_transformer_lens.py pythia-70m-step1000.safetensors "Paris is"

The file carries its own TransformerLens config and a record of its tokenizer, so this works
offline (HF_HUB_OFFLINE=1) once the file has been converted.
"""

from __future__ import annotations

import sys

import pythia_tl

path, text = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "the model was a layer of the head"
model = pythia_tl.load(path)  # a HookedTransformer; the file's dtype, its tokenizer
logits, cache = model.run_with_cache(text)
top = logits[0, -1].topk(3).indices.tolist()
step = model.cfg.checkpoint_value  # None for a file converted from a folder or from main
where = f"step {step}" if step is not None else "no training step recorded"
print(f"{model.cfg.model_name} ({where}): {model.cfg.n_layers} layers")
print(f"next-token candidates after {text!r}: {[model.tokenizer.decode(t) for t in top]}")
print(f"attention pattern of layer 0: {tuple(cache['pattern', 0].shape)}")
