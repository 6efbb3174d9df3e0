"""GroupRunner in one process, on a real Redis: batches, outcomes, priorities, dead letters."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from redis.asyncio import Redis

from processors.deadletter import backoff_delay
from processors.debounce import DUE
from processors.runtime import (
    ACKED,
    Delivery,
    GroupRunner,
    HandlerContext,
    acked,
    queue_ack,
)
from tests.processors.recording import (
    ATTEMPTS,
    COMPLETIONS,
    ORDER,
    TIMES,
    Options,
    append,
    recording_handler,
    topology,
)
from tests.waiting import eventually
from zapstream.envelope import decode_fields
from zapstream.events import TurnReady
from zapstream.metrics import Metrics
from zapstream.scripts import Batch
from zapstream.settings import Settings
from zapstream.topology import Backoff, Duration, Topology

GROUP = "g"
WORK = "zapstream:{p0}:work"
DEAD = "zapstream:{p0}:dead:g"
FAILURES = "zapstream:{p0}:failures:g"


def context(redis: Redis, topo: Topology) -> HandlerContext:
    return HandlerContext(redis=redis, settings=Settings(), topology=topo, metrics=Metrics())


def group(**settings: object) -> dict[str, dict[str, object]]:
    return {GROUP: {"streams": ["work"], **settings}}


async def completions(redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(COMPLETIONS)).items()}


async def pending(redis: Redis, key: str = WORK) -> int:
    return int((await redis.xpending(key, GROUP))["pending"])


async def test_10000_entries_with_concurrency_16_each_handled_once(redis: Redis) -> None:
    topo = topology(group(concurrency=16, batch=100))
    ids = await append(redis, topo, "work", 10_000)
    runner = GroupRunner(context(redis, topo), GROUP, recording_handler(Options()))
    await runner.drain(timeout=120)
    done = await completions(redis)
    assert len(done) == 10_000 and set(done) == set(ids)
    assert set(done.values()) == {1}
    assert await pending(redis) == 0


async def test_runs_at_most_concurrency_handlers_at_once(redis: Redis) -> None:
    topo = topology(group(concurrency=4, batch=10))
    await append(redis, topo, "work", 40)
    running = 0
    peak = 0

    async def handler(ctx: HandlerContext, delivery: object) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)  # simulated work, so that handlers overlap
        running -= 1

    await GroupRunner(context(redis, topo), GROUP, handler).drain()
    assert peak == 4


async def test_retry_with_backoff_then_success(redis: Redis) -> None:
    topo = topology(group(max_failures=5, backoff={"base": "100ms", "factor": 2, "max": "1s"}))
    (entry_id,) = await append(redis, topo, "work", 1)
    runner = GroupRunner(context(redis, topo), GROUP, recording_handler(Options(fail_times=2)))
    await runner.drain()
    assert await completions(redis) == {entry_id: 1}
    assert int(await redis.hget(ATTEMPTS, entry_id)) == 3
    times = [float(t) for t in await redis.lrange(TIMES + entry_id, 0, -1)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.1 - 0.01 and gaps[1] >= 0.2 - 0.01, gaps  # base, then base * factor
    assert await redis.exists(DEAD) == 0
    assert await redis.hlen("zapstream:{p0}:failures:g") == 0  # cleared on success


async def test_poison_entry_is_dead_lettered_with_its_payload_and_the_group_goes_on(
    redis: Redis,
) -> None:
    topo = topology(group(max_failures=3, backoff={"base": "10ms", "max": "20ms"}))
    ids = await append(redis, topo, "work", 20)
    options = Options(fail_turns=("t7",))
    await GroupRunner(context(redis, topo), GROUP, recording_handler(options)).drain()
    done = await completions(redis)
    assert set(done) == set(ids) - {ids[7]}
    ((_, fields),) = await redis.xrange(DEAD)
    text = {k.decode(): v.decode() for k, v in fields.items()}
    assert text["dlq_group"] == GROUP and text["dlq_stream"] == "work"
    assert text["dlq_entry_id"] == ids[7]
    assert text["dlq_failures"] == "3" and int(text["dlq_deliveries"]) >= 1
    assert text["dlq_error"] == "RuntimeError: failure 3 of t7"
    event = decode_fields(fields)  # the full original event, readable without the source
    assert isinstance(event, TurnReady) and event.turn_id == "t7"
    assert int(await redis.hget(ATTEMPTS, ids[7])) == 3
    assert await pending(redis) == 0


async def test_a_handler_past_its_timeout_is_a_failure_then_retried(redis: Redis) -> None:
    topo = topology(group(timeout="200ms", backoff={"base": "10ms"}))
    (entry_id,) = await append(redis, topo, "work", 1)
    options = Options(slow_times=1, slow_seconds=30)
    runner = GroupRunner(context(redis, topo), GROUP, recording_handler(options))
    await runner.drain(timeout=10)
    assert await completions(redis) == {entry_id: 1}
    assert int(await redis.hget(ATTEMPTS, entry_id)) == 2
    assert runner.ctx.metrics.group("handler_failed", GROUP)._value.get() == 1


async def test_reject_dead_letters_at_once(redis: Redis) -> None:
    topo = topology(group(max_failures=5))
    ids = await append(redis, topo, "work", 3)
    options = Options(reject_turns=("t1",))
    await GroupRunner(context(redis, topo), GROUP, recording_handler(options)).drain()
    ((_, fields),) = await redis.xrange(DEAD)
    assert fields[b"dlq_entry_id"].decode() == ids[1]
    assert fields[b"dlq_failures"] == b"1"
    assert fields[b"dlq_error"].startswith(b"rejected: this turn cannot be answered")
    assert int(await redis.hget(ATTEMPTS, ids[1])) == 1


async def test_an_entry_that_waits_is_not_dead_lettered(redis: Redis) -> None:
    topo = topology(group(max_failures=2))
    (entry_id,) = await append(redis, topo, "work", 1)
    options = Options(wait_times=6, wait_seconds=0.01)  # waits three times max_failures
    await GroupRunner(context(redis, topo), GROUP, recording_handler(options)).drain()
    assert await completions(redis) == {entry_id: 1}
    assert int(await redis.hget(ATTEMPTS, entry_id)) == 7
    assert await redis.exists(DEAD) == 0


async def test_an_undecodable_entry_is_dead_lettered_as_it_was(redis: Redis) -> None:
    topo = topology(group())
    await redis.xadd(
        WORK,
        {
            "type": "turn.ready",
            "v": "1",
            "session_id": "s",
            "turn_id": "t",
            "message_ids": "not json",
        },
    )
    await redis.xadd(WORK, {"type": "no.such.event", "v": "1"})
    good = await append(redis, topo, "work", 1)
    await GroupRunner(context(redis, topo), GROUP, recording_handler(Options())).drain()
    dead = await redis.xrange(DEAD)
    assert [f[b"dlq_error"].split(b":")[0] for _, f in dead] == [b"undecodable entry"] * 2
    assert {f[b"type"] for _, f in dead} == {b"turn.ready", b"no.such.event"}
    assert set(await completions(redis)) == set(good)


async def test_priorities_high_stream_first_when_both_are_full(redis: Redis) -> None:
    topo = topology({GROUP: {"streams": ["high", "low"], "concurrency": 2, "batch": 5}})
    await append(redis, topo, "low", 50, prefix="low")
    await append(redis, topo, "high", 50, prefix="high")
    await GroupRunner(context(redis, topo), GROUP, recording_handler(Options())).drain()
    order = [t.decode() for t in await redis.lrange(ORDER, 0, -1)]
    assert len(order) == 100
    # Handlers overlap by at most the concurrency, so allow that much interleaving at the seam.
    last_high = max(i for i, t in enumerate(order) if t.startswith("high"))
    first_low = min(i for i, t in enumerate(order) if t.startswith("low"))
    assert last_high < first_low + 2, order


async def test_a_live_reader_follows_new_entries_and_stops_cleanly(redis: Redis) -> None:
    topo = topology(group(block="100ms"))
    runner = GroupRunner(context(redis, topo), GROUP, recording_handler(Options()))
    task = asyncio.create_task(runner.run())
    ids = await append(redis, topo, "work", 5)

    async def all_done() -> bool:
        return len(await completions(redis)) == 5

    await eventually(all_done)
    runner.stop()
    await asyncio.wait_for(task, timeout=5)
    assert set(await completions(redis)) == set(ids)
    info = await redis.xinfo_consumers(WORK, GROUP)
    assert info == []  # a clean stop with nothing held forgets the consumer


@pytest.mark.single_redis  # its recording keys sit in {p0}, its entries in other partitions
async def test_partitions_are_all_read(redis: Redis) -> None:
    topo = topology(group(), partitions=3)
    for partition in range(3):
        await append(redis, topo, "work", 10, prefix=f"p{partition}-", partition=partition)
    await GroupRunner(context(redis, topo), GROUP, recording_handler(Options())).drain()
    order = {t.decode() for t in await redis.lrange(ORDER, 0, -1)}
    assert order == {f"p{p}-{n}" for p in range(3) for n in range(10)}
    assert [await pending(redis, f"zapstream:{{p{p}}}:work") for p in range(3)] == [0, 0, 0]


@pytest.mark.parametrize("failures", [1, 3, 10])
async def test_backoff_schedule(failures: int) -> None:
    backoff = Backoff(base=Duration(0.5), factor=2.0, max=Duration(3.0))
    assert backoff_delay(backoff, failures) == min(3.0, 0.5 * 2 ** (failures - 1))


def test_backoff_past_a_floats_range_is_the_max() -> None:
    # max_failures in the thousands: 2.0 ** 2999 overflows a float, the delay is still `max`.
    backoff = Backoff(base=Duration(0.5), factor=2.0, max=Duration(3.0))
    assert backoff_delay(backoff, 3000) == 3.0


# --- handlers that ack with their own effect (runtime.ACKED) ------------------------------

DONE = "test:{p0}:acked-with-effect"


async def acking_handler(ctx: HandlerContext, delivery: Delivery) -> str | None:
    """An effect and the fenced ack in one round trip, as the send and settle groups do."""
    batch = Batch(ctx.redis)
    batch.command.hincrby(DONE, delivery.envelope.entry_id, 1)
    queue_ack(batch, ctx, delivery)
    _, ack = await batch.execute()
    return acked(ack)


def sample(ctx: HandlerContext, counter: str) -> float:
    return ctx.metrics.registry.get_sample_value(counter, {"group": GROUP}) or 0.0


async def test_a_handler_acking_with_its_effect_settles_each_entry_once(
    redis: Redis,
) -> None:
    topo = topology(group(concurrency=8, batch=50))
    ids = await append(redis, topo, "work", 200)
    ctx = context(redis, topo)
    await GroupRunner(ctx, GROUP, acking_handler).drain()
    done = {k.decode(): int(v) for k, v in (await redis.hgetall(DONE)).items()}
    assert done == dict.fromkeys(ids, 1)
    assert await pending(redis) == 0
    assert sample(ctx, "zapstream_handler_done_total") == 200
    assert sample(ctx, "zapstream_handler_fenced_total") == 0


async def test_an_entry_taken_over_before_the_handlers_ack_is_fenced_not_acked(
    redis: Redis,
) -> None:
    topo = topology(group())
    [entry_id] = await append(redis, topo, "work", 1)

    async def taken_over_meanwhile(ctx: HandlerContext, delivery: Delivery) -> str | None:
        # Another consumer claims the entry (as a reclaim after a missed heartbeat would).
        await redis.xclaim(WORK, GROUP, "other", 0, [entry_id])
        return await acking_handler(ctx, delivery)

    ctx = context(redis, topo)
    runner = GroupRunner(ctx, GROUP, taken_over_meanwhile)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: sample(ctx, "zapstream_handler_fenced_total") == 1)
    runner.stop()
    await task
    assert sample(ctx, "zapstream_handler_done_total") == 0
    owners = await redis.xpending_range(WORK, GROUP, min="-", max="+", count=10)
    assert [(o["message_id"].decode(), o["consumer"].decode()) for o in owners] == [
        (entry_id, "other")
    ]


async def test_a_handler_script_that_acks_after_a_failure_still_clears_the_failure_count(
    redis: Redis,
) -> None:
    """ACKED after failures: the runtime's own ack clears the count the script left."""
    topo = topology(group(max_failures=5, backoff={"base": "10ms", "factor": 1, "max": "10ms"}))
    [entry_id] = await append(redis, topo, "work", 1)
    tries = itertools.count()
    counted: list[bytes | None] = []

    async def fails_once_then_acks(ctx: HandlerContext, delivery: Delivery) -> str | None:
        if next(tries) == 0:
            raise RuntimeError("the first try fails")
        counted.append(await redis.hget(FAILURES, entry_id))
        await redis.xack(WORK, GROUP, entry_id)  # as debounce.lua and turns.lua ack
        return ACKED

    await GroupRunner(context(redis, topo), GROUP, fails_once_then_acks).drain()
    assert counted == [b"1"]
    assert await pending(redis) == 0
    assert await redis.hget(FAILURES, entry_id) is None


async def test_a_batch_runs_a_script_redis_forgot_and_keeps_every_answer_in_place(
    redis: Redis,
) -> None:
    """NOSCRIPT (Redis restarted without persistence): the script runs again on its own."""
    due = "test:{p0}:due"
    await redis.zadd(due, {"s1": 1, "s2": 2})
    await redis.script_flush()
    batch = Batch(redis)
    batch.command.set("test:{p0}:before", "1")
    batch.script(DUE, [due], [10])
    batch.command.get("test:{p0}:before")
    assert await batch.execute() == [True, [b"s1", b"s2"], b"1"]
