"""The ceiling: a bare redis-py asyncio loop, XREADGROUP COUNT <batch> then XACK of the ids read,
one call after the other, until every entry is consumed. No decoding, no handler, no fence;
on the same event loop as zapstream (loop.py).
"""

from __future__ import annotations

import time

from process_bench.loop import event_loop_name, run_like_work
from process_bench.progress import log_progress
from process_bench.turns import GROUP, append_turns, turns_key
from zapstream.connections import open_redis
from zapstream.topology import Topology

CONSUMER = "bare"


async def consume_once(redis_url: str, topology: Topology, events: int, count: int) -> float:
    """Seconds the loop takes to read and ack `events` pre-appended entries."""
    key = turns_key(topology)
    async with open_redis(redis_url) as redis:
        await redis.flushdb()
        await append_turns(redis, topology, events)
        await redis.xgroup_create(key, GROUP, id="0")
        consumed = 0
        started = time.perf_counter()
        while consumed < events:
            reply = await redis.xreadgroup(GROUP, CONSUMER, {key: ">"}, count=count)
            streams = reply.items() if isinstance(reply, dict) else reply or []
            ids = [entry_id for _, items in streams for entry_id, _ in items]
            if not ids:
                raise RuntimeError(f"bare loop: the stream ran dry at {consumed} of {events}")
            await redis.xack(key, GROUP, *ids)
            consumed += len(ids)
        elapsed = time.perf_counter() - started
        pending = (await redis.xpending(key, GROUP))["pending"]
    if pending:
        raise RuntimeError(f"bare loop: {pending} entries still pending")
    return elapsed


def measure_bare(redis_url: str, topology: Topology, events: int, count: int) -> float:
    """Events per second of one bare run."""
    log_progress(
        f"bare: XREADGROUP COUNT {count} + XACK over {events:,} entries (on {event_loop_name()})"
    )
    elapsed = run_like_work(consume_once(redis_url, topology, events, count))
    log_progress(f"  {events / elapsed:,.0f} events/s ({elapsed:.2f} s)")
    return events / elapsed
