"""The tokenizer files a Pythia checkpoint carries beside its weights, and how a file records them.

Every Pythia repository holds the same small GPT-NeoX-20B tokenizer files. A conversion records
where they are (``tokenizer`` in the output's metadata), so that loading the file later finds its
tokenizer: a Hub revision's files pinned to its commit in huggingface_hub's cache, or a local
folder's files by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Pythia's tokenizer.json is about 2 MB; a recorded folder is untrusted, its files read whole.
MAX_TOKENIZER_FILE_BYTES = 64 << 20


def hub_tokenizer(repo_id: str, commit: str, files: tuple[str, ...]) -> dict[str, Any] | None:
    """The record of a Hub revision's tokenizer files (None when it has none)."""
    if not files:
        return None
    return {"repo_id": repo_id, "revision": commit, "files": list(files)}


def folder_tokenizer(folder: Path) -> dict[str, Any] | None:
    """The record of a local folder's tokenizer files (None when it has none)."""
    found = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not found:
        return None
    return {"folder": str(folder), "files": found}
