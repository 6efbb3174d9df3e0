"""The backlog the read models catch up on: the seeded history of the projection tests
(tests/projections/history.py), appended to the log with pipelined XADD before `zapstream run`
starts, so that its followers begin at the log's start.

The consumer groups are created at the log's end (`$`) first: they skip the backlog and handle
only the webhook traffic, as in a model rebuilt or a follower restarted behind a live system.
The backlog's entry ids are read back once, before the run, so that a checkpoint read from
outside the process (checkpoints.py) says how many backlog entries a follower has applied.
"""

from __future__ import annotations

import bisect
import math
import time

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from projections.follower import START, Target
from tests.projections.history import STREAMS, key, write_history
from zapstream.connections import open_redis
from zapstream.keys import stream_keys
from zapstream.topology import Topology

EVENTS_PER_SESSION = 13.8  # the history's mean (seed 7: 27,644 events of 2,000 sessions)
APPEND_BATCH = 5_000  # XADDs per pipeline round trip
XRANGE_COUNT = 10_000  # entries per XRANGE call reading the ids back

EntryOrder = tuple[int, int]


def entry_order(entry_id: str) -> EntryOrder:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    events: int  # entries appended, over every stream
    sessions: int  # the history's sessions
    write_s: float  # seconds the appends took
    ids: dict[str, list[EntryOrder]]  # stream key -> its backlog entries' ids, in order
    ends: dict[str, str]  # stream key -> its last backlog entry id

    def applied(self, positions: dict[str, str]) -> int:
        """Backlog entries at or before `positions` (a checkpoint: stream key -> entry id)."""
        return sum(
            bisect.bisect_right(ids, entry_order(positions.get(k, START)))
            for k, ids in self.ids.items()
        )


async def write_backlog(redis_url: str, topology: Topology, events: int, seed: int) -> Backlog:
    """Append about `events` events of the seeded history to the (flushed) log, create every
    consumer group after them, and read their ids back."""
    keys = {k for stream in topology.streams for k in stream_keys(topology, stream)}
    for stream in set(STREAMS.values()):
        if key(stream) not in keys:
            raise RuntimeError(f"{key(stream)} is not a stream key of the bench's topology")
    sessions = math.ceil(events / EVENTS_PER_SESSION)
    async with open_redis(redis_url) as redis:
        began = time.perf_counter()
        summary = await write_history(redis, seed=seed, sessions=sessions, batch=APPEND_BATCH)
        write_s = time.perf_counter() - began
        await create_groups_at_end(redis, topology)
        ids = {k: await read_ids(redis, k) for k in sorted(keys)}
    ends = {k: f"{found[-1][0]}-{found[-1][1]}" for k, found in ids.items() if found}
    return Backlog(events=summary.events, sessions=sessions, write_s=write_s, ids=ids, ends=ends)


async def create_groups_at_end(redis: Redis, topology: Topology) -> None:
    """Every group of the topology on every stream it reads, from the entries appended next."""
    for group, spec in topology.groups.items():
        for stream in spec.streams:
            for k in stream_keys(topology, stream):
                try:
                    await redis.xgroup_create(k, group, id="$", mkstream=True)
                except ResponseError as err:
                    if "BUSYGROUP" not in str(err):
                        raise


async def read_ids(redis: Redis, stream_key: str) -> list[EntryOrder]:
    found: list[EntryOrder] = []
    start = "-"
    while True:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(  # type: ignore[assignment]
            stream_key, start, "+", count=XRANGE_COUNT
        )
        found += [entry_order(entry_id.decode()) for entry_id, _ in entries]
        if len(entries) < XRANGE_COUNT:
            return found
        start = "(" + entries[-1][0].decode()


async def skip_backlog(target: Target, backlog: Backlog) -> None:
    """Create the model and put its checkpoint at the backlog's end: its follower in the run
    then follows live, with nothing to catch up on."""
    await target.start()
    try:
        await target.apply([], {}, dict(backlog.ends))
    finally:
        await target.close()
