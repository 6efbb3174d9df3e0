"""The bench's group and its entries: turn.ready events pre-appended to the `turns` stream.

The topology is the repository's streams.yaml with one group added, `bench-noop` on `turns`,
so every key is the one zapstream uses. The entries are made as tests/processors/recording.py
makes them (append()), pipelined, before anything is timed.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from redis.asyncio import Redis

from zapstream.envelope import encode_fields
from zapstream.events import TurnReady
from zapstream.keys import stream_key
from zapstream.topology import GroupSpec, Topology, load_topology

GROUP = "bench-noop"
STREAM = "turns"
APPEND_CHUNK = 10_000  # XADDs per pipeline round trip


def bench_topology(config: Path, *, concurrency: int, batch: int) -> Topology:
    """streams.yaml with the bench's group (and no other) on the `turns` stream."""
    topology = load_topology(config)
    group = GroupSpec(streams=(STREAM,), concurrency=concurrency, batch=batch)
    return msgspec.structs.replace(topology, groups={GROUP: group})


def turns_key(topology: Topology) -> str:
    """The one stream key the bench appends to and reads (partition 0)."""
    return stream_key(topology, STREAM, 0)


def turn_payload(n: int) -> TurnReady:
    """Event n: what the zapstream and bare runs read, and what the Celery tasks carry."""
    return TurnReady(session_id=f"s{n % 7}", turn_id=f"t{n}", message_ids=[])


async def append_turns(redis: Redis, topology: Topology, count: int) -> None:
    """Append `count` turn.ready entries to partition 0 of `turns`, pipelined."""
    key = turns_key(topology)
    for start in range(0, count, APPEND_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(count, start + APPEND_CHUNK)):
            pipe.xadd(key, encode_fields(turn_payload(n)))  # type: ignore[arg-type]
        await pipe.execute()
