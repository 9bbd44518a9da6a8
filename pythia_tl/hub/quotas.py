"""The Hub's rate limits, and what a run's requests come to against them.

The Hub counts requests per 5-minute fixed window, per IP address without a token and per
account with one (hub-docs ``rate-limits.md``): ``/resolve`` requests ("resolvers") and API
calls separately. Shards of one suite behind one address, or run with one token, share a window.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_SECONDS = 300
# What huggingface_hub spends on one small file (config.json, an index, a tokenizer file):
# a HEAD for its metadata, then the GET.
RESOLVES_PER_SMALL_FILE = 2


@dataclass(frozen=True)
class Quota:
    """What one kind of user may ask of the Hub in one window."""

    user: str
    resolvers: int
    api: int


QUOTAS = (
    Quota("anonymous", 3_000, 500),
    Quota("free account", 5_000, 1_000),
    Quota("PRO account", 12_000, 2_500),
)


def exceeded(resolve_requests: int, api_requests: int) -> list[str]:
    """The kinds of user whose one window the requests do not fit in."""
    return [
        quota.user
        for quota in QUOTAS
        if resolve_requests > quota.resolvers or api_requests > quota.api
    ]
