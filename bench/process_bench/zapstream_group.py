"""zapstream: a no-op handler group drained by the real runtime, GroupRunner.drain().

Per run: flush the bench's database, pre-append the entries (not timed), then time drain()
alone: XREADGROUP, decode, dispatch to the handler, fenced ack (ack.lua), as `zapstream work`
does, in this one process and on its event loop (loop.py).
"""

from __future__ import annotations

import time

from process_bench.loop import event_loop_name, run_like_work
from process_bench.progress import log_progress
from process_bench.turns import GROUP, append_turns, turns_key
from processors.runtime import Delivery, GroupRunner, HandlerContext
from zapstream.connections import open_redis
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.topology import Topology

MIN_DRAIN_RATE = 1_000  # events/s below which a drain is reported as stuck


async def noop(ctx: HandlerContext, delivery: Delivery) -> None:
    """Does nothing: what is measured is the runtime around the handler."""


async def drain_once(redis_url: str, topology: Topology, events: int) -> float:
    """Seconds GroupRunner.drain() takes for `events` pre-appended entries."""
    async with open_redis(redis_url) as redis:
        await redis.flushdb()
        await append_turns(redis, topology, events)
        metrics = Metrics()
        ctx = HandlerContext(redis=redis, settings=Settings(), topology=topology, metrics=metrics)
        runner = GroupRunner(ctx, GROUP, noop)
        started = time.perf_counter()
        await runner.drain(timeout=30 + events / MIN_DRAIN_RATE)
        elapsed = time.perf_counter() - started
        done = metrics.registry.get_sample_value("zapstream_handler_done_total", {"group": GROUP})
        pending = (await redis.xpending(turns_key(topology), GROUP))["pending"]
    if done != events or pending:
        raise RuntimeError(f"zapstream drain: {done} of {events} acked, {pending} still pending")
    return elapsed


def measure_zapstream(redis_url: str, topology: Topology, events: int) -> float:
    """Events per second of one drain."""
    spec = topology.groups[GROUP]
    log_progress(
        f"zapstream: draining {events:,} entries (concurrency {spec.concurrency}, "
        f"batch {spec.batch}, on {event_loop_name()})"
    )
    elapsed = run_like_work(drain_once(redis_url, topology, events))
    log_progress(f"  {events / elapsed:,.0f} events/s ({elapsed:.2f} s)")
    return events / elapsed
