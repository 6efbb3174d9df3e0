"""A consumer group's lag and pending entries, as Redis reports them or computed when it can't.

`XINFO GROUPS` gives each group's `lag`: entries appended but not yet delivered to it. Redis
7.0 answers nil instead when it cannot know (an entry was deleted with XDEL after the group's
last-delivered id, or the group was created at an arbitrary id). Then the lag is counted here:
the entries after the last-delivered id, read in pages of ids, up to a limit.

`inspect` counts without a limit; `/metrics` counts up to LAG_COUNT_LIMIT at each scrape, so a
scrape stays cheap, and reports the limit when there are more.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from zapstream.connections import text

PAGE = 1000
LAG_COUNT_LIMIT = 100_000


class GroupStats(msgspec.Struct, kw_only=True):
    key: str  # the stream's Redis key
    group: str
    consumers: int
    pending: int
    last_delivered: str  # the group's last-delivered id ("0-0" before any delivery)
    lag: int  # entries not yet delivered to the group
    lag_computed: bool  # Redis reported nil; `lag` was counted here (capped at the limit)


async def count_after(redis: Redis, key: str, after: str, limit: int | None = None) -> int:
    """Entries of `key` with an id greater than `after` (at most `limit`)."""
    counted = 0
    start = f"({after}"
    while limit is None or counted < limit:
        page = PAGE if limit is None else min(PAGE, limit - counted)
        # XRANGE brings the fields too; a page of 1000 small entries is a few hundred kB at
        # most, and this path runs only when Redis cannot say the lag itself.
        entries: Any = await redis.xrange(key, min=start, max="+", count=page)
        counted += len(entries)
        if len(entries) < page:
            break
        start = f"({text(entries[-1][0])}"
    return counted


async def group_stats(
    redis: Redis, key: str, limit: int | None = LAG_COUNT_LIMIT
) -> dict[str, GroupStats]:
    """Every group of the stream `key`, by name (empty when the stream does not exist)."""
    if not await redis.exists(key):
        return {}
    found: dict[str, GroupStats] = {}
    for info in await redis.xinfo_groups(key):
        name = text(info["name"])
        last = text(info.get("last-delivered-id", b"0-0"))
        reported: Any = info.get("lag")
        computed = reported is None
        lag = await count_after(redis, key, last, limit) if computed else int(reported)
        found[name] = GroupStats(
            key=key,
            group=name,
            consumers=int(info.get("consumers", 0)),
            pending=int(info.get("pending", 0)),
            last_delivered=last,
            lag=lag,
            lag_computed=computed,
        )
    return found
