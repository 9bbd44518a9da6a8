"""When two revisions hold the same weights: the same set of weight-file sha256.

The Hub lists each LFS file's sha256 before anything is downloaded, and every shard an index can
name is among a revision's weight files, so equal sets mean byte-identical weights, in one
repository or across repositories. ``audit`` reports such revisions; ``batch`` converts them once.
"""

from __future__ import annotations

from collections.abc import Mapping


def weight_set(sha256: Mapping[str, str]) -> frozenset[str] | None:
    """The set of a revision's weight-file sha256 (None when none is known)."""
    return frozenset(sha256.values()) if sha256 else None
