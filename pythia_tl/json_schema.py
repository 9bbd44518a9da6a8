"""The version of the keys of every JSON object pythia-tl prints or writes (``--json``, the batch
summary), documented in docs/json.md: a release that renames or removes a key raises it."""

from __future__ import annotations

SCHEMA_VERSION = 1


def with_schema(value: dict[str, object]) -> dict[str, object]:
    """``value`` with the schema version as its first key."""
    return {"schema": SCHEMA_VERSION, **value}
