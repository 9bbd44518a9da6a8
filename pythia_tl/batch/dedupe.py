"""Revisions that hold the same weights: recognising them, and what a batch writes for them.

Two revisions of one repository whose weight files have the same set of sha256 hold the same
weights (the Hub really has such branches: EleutherAI/pythia #205, #83), so one conversion
serves both. Only one of them gets a file, the latest checkpoint of the group (a branch can serve a
later checkpoint's files under an earlier name, as pythia-2.8b's do, never the reverse); the
others get none, and the summary says why (``duplicate_of``, ``anomaly``). A file's metadata
names the one revision it was converted from, so a file reached by a duplicate's name would
claim another step: a hard link or copy under the duplicate's name would mislabel it, and a
file of its own would double the disk a suite needs (86 such branches in pythia-2.8b) for two
strings of metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pythia_tl.audit.identity import weight_set
from pythia_tl.batch.work import WorkItem
from pythia_tl.errors import OutputError

# The repository and the sha256 of its weight files.
WeightsKey = tuple[str, frozenset[str]]


def weights_key(repo_id: str, sha256: Mapping[str, str]) -> WeightsKey | None:
    """The key under which identical weights of one repository meet; None when no sha256 is
    known."""
    found = weight_set(sha256)
    return (repo_id, found) if found is not None else None


def remove_stale_output(target: Path) -> bool:
    """Remove what an earlier run left at a duplicate's output path (a stale conversion, or an
    older version's link to another revision's file); whether there was one."""
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(
            f"{target}: cannot remove it ({exc}); the revision holds another's weights and gets "
            "no file of its own"
        ) from None
    return True


def duplicate_note(item: WorkItem, first: WorkItem) -> str:
    """What the summary says of a revision that holds another's weights (``anomaly``): whether
    ``first`` is later in training (by step, or by the token count a branch is named by)."""
    when = "a later" if first.position > item.position else "an earlier"
    what = "step" if item.step is not None and first.step is not None else "checkpoint"
    return f"{item.revision} holds the same weight files as {when} {what}, {first.revision}"
