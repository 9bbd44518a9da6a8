"""Revisions that hold the same weights: recognising them and publishing one output for all.

Two revisions of one repository whose weight files have the same set of sha256 hold the same
weights (the Hub really has such branches), so one conversion serves both. The duplicate's output
is a hard link to the first one's (a copy where the file system cannot link), so it costs no disk.
It therefore carries the first revision's ``revision`` and ``commit`` metadata; its
``source_files`` sha256 are true for both, and the batch summary records each revision's own
commit. Writing a separate file per duplicate would double the disk a suite needs (pythia-2.8b
has 86 such branches) for two strings of metadata.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pythia_tl.audit.identity import weight_set
from pythia_tl.errors import OutputError
from pythia_tl.output.atomic import CANNOT_LINK, atomic_path

# The repository and the sha256 of its weight files.
WeightsKey = tuple[str, frozenset[str]]

_CANNOT_LINK = (*CANNOT_LINK, errno.EACCES)


def weights_key(repo_id: str, sha256: Mapping[str, str]) -> WeightsKey | None:
    """The key under which identical weights of one repository meet; None when no sha256 is
    known."""
    found = weight_set(sha256)
    return (repo_id, found) if found is not None else None


def link_output(existing: Path, target: Path) -> Literal["hard link", "copy"]:
    """Publish ``existing`` also at ``target`` (replacing what is there), atomically."""
    how: Literal["hard link", "copy"] = "hard link"
    try:
        with atomic_path(target, overwrite=True) as temp:
            try:
                os.link(existing, temp)
            except OSError as exc:
                if exc.errno not in _CANNOT_LINK:
                    raise
                _copy(existing, temp)
                how = "copy"
    except OSError as exc:
        raise OutputError(f"{target}: cannot link or copy {existing} there ({exc})") from None
    return how


def _copy(source: Path, temp: Path) -> None:
    with open(source, "rb") as reader, open(temp, "xb") as writer:
        shutil.copyfileobj(reader, writer, 16 << 20)
        writer.flush()
        os.fsync(writer.fileno())
