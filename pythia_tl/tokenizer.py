"""Finding the tokenizer of a converted file: the one its metadata records, or the one asked for.

A file converted from the Hub records the repository and commit whose tokenizer files the
conversion put in huggingface_hub's cache; one converted from a folder records the folder. The
cache is tried first without any network, so that loading works offline and never waits on a
Hub that cannot be reached.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pythia_tl.errors import SourceError
from pythia_tl.text import first_line


class NoTokenizerWarning(UserWarning):
    """The model was loaded without a tokenizer."""


def find_tokenizer(choice: Any, record: dict[str, Any] | None, file: Path) -> Any:
    """The tokenizer for ``choice``: "auto" (from ``record``), a name, a folder, a tokenizer
    object, or None (no tokenizer). With "auto", a tokenizer that cannot be found is a warning."""
    if choice is None:
        return None
    if not isinstance(choice, (str, Path)):
        return choice
    if isinstance(choice, Path) or choice != "auto":
        found = _from_folder(Path(choice)) if Path(choice).is_dir() else _from_hub(str(choice))
        if found is None:
            raise SourceError(
                f"tokenizer {str(choice)!r}: neither a folder nor a Hub tokenizer in the cache or "
                "reachable"
            )
        return found
    if record is None:
        return _none(
            f"{file}: no tokenizer recorded (converted from a folder without tokenizer files)"
        )
    if "folder" in record:
        folder = Path(str(record["folder"]))
        found = _from_folder(folder) if folder.is_dir() else None
        return (
            found if found is not None else _none(f"{file}: the tokenizer folder {folder} is gone")
        )
    repo_id, revision = str(record.get("repo_id")), record.get("revision")
    found = _from_hub(repo_id, None if revision is None else str(revision))
    if found is None:
        return _none(
            f"{file}: the tokenizer of {repo_id}@{revision} is neither in the cache nor "
            "reachable on the Hub"
        )
    return found


def _none(why: str) -> None:
    warnings.warn(
        f"{why}; the model has no tokenizer: pass tokenizer= a Hub name, a folder or a tokenizer",
        NoTokenizerWarning,
        stacklevel=4,
    )
    return None


def _from_folder(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
    except (OSError, ValueError):
        return None
    except (Exception, RecursionError) as exc:  # a malformed tokenizer.json: KeyError and others
        raise _malformed(str(folder), exc) from None


def _from_hub(name: str, revision: str | None = None) -> Any:
    """From the cache first (no network); then, unless offline, from the Hub."""
    import huggingface_hub.constants as hf_constants
    from transformers import AutoTokenizer

    # TransformerLens wants a tokenizer made with add_bos_token=True: it removes the BOS itself
    # when the model (like Pythia) does not prepend one.
    attempts = [True] if hf_constants.HF_HUB_OFFLINE else [True, False]
    for local_only in attempts:
        try:
            return AutoTokenizer.from_pretrained(
                name, revision=revision, add_bos_token=True, local_files_only=local_only
            )
        except (OSError, ValueError):
            continue
        except (Exception, RecursionError) as exc:
            raise _malformed(name, exc) from None
    return None


def _malformed(where: str, exc: BaseException) -> SourceError:
    return SourceError(
        f"{where}: its tokenizer files cannot be read ({first_line(exc)}); pass tokenizer= "
        "another, or None"
    )
