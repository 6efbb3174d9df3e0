"""The peer: the whole log read with XRANGE alone, COUNT 1000, one stream key after the other,
nothing decoded beyond what redis-py returns (ids and fields stay bytes)."""

from __future__ import annotations

import time
from typing import cast

from redis.asyncio import Redis

from projections.replay import ProgressBar
from replay_bench.job import Timed
from replay_bench.memory import rss_mb
from replay_bench.streams import entry_counts, log_keys
from zapstream.topology import Topology

COUNT = 1000


async def read_with_xrange(redis: Redis, topology: Topology) -> Timed:
    """Read every entry of every stream key, COUNT at a time, until each key's end."""
    keys = await entry_counts(redis, log_keys(topology))
    bar = ProgressBar("xrange", sum(keys.values()))
    rss_start = rss_mb()
    read = 0
    started = time.perf_counter()
    for key in keys:
        start = b"-"
        while entries := await redis.xrange(key, min=start, max="+", count=COUNT):
            read += len(entries)
            bar(len(entries))
            start = b"(" + cast(bytes, entries[-1][0])  # exclusive: after the last one read
    seconds = time.perf_counter() - started
    bar.finish()
    return Timed(events=read, seconds=seconds, rss_start_mb=rss_start, settings=f"COUNT {COUNT}")
