"""The log's stream keys, and how many entries each holds."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from zapstream.keys import stream_keys
from zapstream.topology import Topology


def log_keys(topology: Topology) -> dict[str, str]:
    """Every stream key of the topology (each partition's), with its stream's name."""
    return {k: stream for stream in topology.streams for k in stream_keys(topology, stream)}


async def entry_counts(redis: Redis, keys: Iterable[str]) -> dict[str, int]:
    """XLEN of each key, in one round trip."""
    keys = list(keys)
    pipe = redis.pipeline(transaction=False)
    for k in keys:
        pipe.xlen(k)
    return dict(zip(keys, map(int, await pipe.execute()), strict=True))
