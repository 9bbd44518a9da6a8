"""A tiny valid tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json) whose
ids fit a tiny model's vocabulary, for tests and examples (which import it by path).

Word-level over a few common words: id 0 is ``<|endoftext|>`` as in Pythia (BOS and EOS), id 1
the unknown token, the rest words.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

_WORDS_TEXT = (
    "the a of and to in is was for on that with as by at from it an be this are or which his "
    "her model layer head token step"
)
WORDS = tuple(_WORDS_TEXT.split(" "))
SAMPLE_TEXT = "the model was a layer of the head and the step is in the token"


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """Write the three tokenizer files into ``folder`` with ids below ``vocab_size``."""
    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for word in WORDS:
        vocab[word] = len(vocab)
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
