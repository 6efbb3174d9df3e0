"""A runner rides a Redis restart out: its reads fail and are asked again, an entry whose
failure could not be recorded (Redis gone under it) is tried again instead of being held in
memory for ever, and everything is handled once Redis is back; a runner started while Redis
is down waits for it. Each test owns its Redis
(AOF, appendfsync always) and kills it with SIGKILL; the chaos run does the same to whole
`zapstream work` processes (tests/chaos)."""

from __future__ import annotations

import asyncio
import collections

from structlog.testing import capture_logs

from processors.runtime import Delivery, GroupRunner, HandlerContext
from tests.processors.recording import append, topology
from tests.servers import OwnRedis
from tests.waiting import eventually
from zapstream.connections import open_redis
from zapstream.metrics import Metrics
from zapstream.settings import Settings

GROUP = "g"
WORK = "zapstream:{p0}:work"


async def test_a_runner_rides_out_a_redis_restart_and_loses_no_entry(
    own_redis: OwnRedis,
) -> None:
    topo = topology({GROUP: {"streams": ["work"], "idle": "5s", "concurrency": 4}})
    attempts: collections.Counter[str] = collections.Counter()
    done: set[str] = set()
    held = asyncio.Event()
    release = asyncio.Event()

    async def handler(ctx: HandlerContext, delivery: Delivery) -> None:
        entry_id = delivery.envelope.entry_id
        attempts[entry_id] += 1
        if getattr(delivery.envelope.event, "turn_id", "").startswith("held") and (
            attempts[entry_id] == 1
        ):
            held.set()
            await release.wait()  # Redis is killed meanwhile
            raise RuntimeError("failed while Redis was down")  # its failure cannot be recorded
        done.add(entry_id)

    async with open_redis(own_redis.url) as redis:
        ctx = HandlerContext(redis=redis, settings=Settings(), topology=topo, metrics=Metrics())
        runner = GroupRunner(ctx, GROUP, handler)
        running = asyncio.create_task(runner.run())
        try:
            before = await append(redis, topo, "work", 5, prefix="before")
            await eventually(lambda: done >= set(before), timeout=10)
            during = await append(redis, topo, "work", 1, prefix="held")
            await eventually(held.is_set, timeout=10)
            own_redis.stop()  # SIGKILL, with the entry in its handler
            release.set()
            # The runner reads (and fails) for a while with Redis gone, and goes on.
            await eventually(lambda: attempts[during[0]] >= 2, timeout=15)
            assert not running.done()
            own_redis.start()  # the same port and directory: the AOF is replayed
            # The pool's connections from before the kill are dead: dropped, so that the
            # test's own calls below do not meet one (the runner's own calls retry).
            await redis.connection_pool.disconnect()
            after = await append(redis, topo, "work", 5, prefix="after")
            await eventually(lambda: done >= {*before, *during, *after}, timeout=20)

            async def nothing_pending() -> bool:
                return int((await redis.xpending(WORK, GROUP))["pending"]) == 0

            await eventually(nothing_pending, timeout=20)
            assert not running.done()
        finally:
            runner.stop()
            await asyncio.wait_for(running, timeout=30)
    assert all(attempts[entry] == 1 for entry in [*before, *after])


async def test_a_runner_started_while_redis_is_down_waits_for_it(own_redis: OwnRedis) -> None:
    topo = topology({GROUP: {"streams": ["work"]}})
    done: list[str] = []

    async def handler(ctx: HandlerContext, delivery: Delivery) -> None:
        done.append(delivery.envelope.entry_id)

    own_redis.stop()
    async with open_redis(own_redis.url) as redis:
        ctx = HandlerContext(redis=redis, settings=Settings(), topology=topo, metrics=Metrics())
        runner = GroupRunner(ctx, GROUP, handler)
        with capture_logs() as logs:
            running = asyncio.create_task(runner.run())
            try:
                await eventually(
                    lambda: sum(e["event"] == "redis_unreachable" for e in logs) >= 2, timeout=20
                )
                assert not running.done()
                own_redis.start()
                ids = await append(redis, topo, "work", 3)
                await eventually(lambda: sorted(done) == sorted(ids), timeout=20)
            finally:
                runner.stop()
                await asyncio.wait_for(running, timeout=30)
