"""Test handlers that record what they did in Redis, so any process can be checked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from processors.runtime import Delivery, Handler, HandlerContext, Reject, Retry
from zapstream.envelope import encode_fields
from zapstream.events import Event, TurnReady
from zapstream.keys import stream_key
from zapstream.scripts import Script
from zapstream.topology import Topology, parse_topology

RECORD = Script(Path(__file__).with_name("record.lua"))
COMPLETIONS = "test:{p0}:completions"  # entry id -> completions (effect + ack, fenced)
ATTEMPTS = "test:{p0}:attempts"  # entry id -> handler starts
FENCED = "test:{p0}:fenced"  # entry id -> completions refused by the fence
ORDER = "test:{p0}:order"  # list of turn ids in completion order
TIMES = "test:{p0}:times:"  # + entry id: list of monotonic-free wall times of attempts


def topology(groups: dict[str, dict[str, object]], partitions: int = 1) -> Topology:
    document = {
        "partitions": partitions,
        "streams": {"messages": {}, "statuses": {}, "work": {}, "high": {}, "low": {}},
        "groups": groups,
    }
    return parse_topology(msgspec.json.encode(document), source="test topology")


async def append(
    redis: Redis, topology: Topology, stream: str, count: int, prefix: str = "t", partition: int = 0
) -> list[str]:
    """Append `count` turn.ready events; their turn ids are `{prefix}{n}`."""
    key = stream_key(topology, stream, partition)
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        event: Event = TurnReady(session_id=f"s{n % 7}", turn_id=f"{prefix}{n}", message_ids=[])
        pipe.xadd(key, encode_fields(event))  # type: ignore[arg-type]
    return [entry_id.decode() for entry_id in await pipe.execute()]


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """What a recording handler does; serialisable, so worker processes take it as JSON."""

    work_seconds: float = 0.0  # simulated work inside the handler (not synchronisation)
    fail_times: int = 0  # raise this many times per entry before succeeding
    fail_turns: tuple[str, ...] = ()  # these turn ids always fail
    reject_turns: tuple[str, ...] = ()  # these turn ids raise Reject
    wait_times: int = 0  # raise Retry (a wait) this many times per entry first
    wait_seconds: float = 0.05
    slow_times: int = 0  # the first attempts this many times take slow_seconds
    slow_seconds: float = 0.0


def recording_handler(options: Options) -> Handler:
    async def handle(ctx: HandlerContext, delivery: Delivery) -> None:
        redis = ctx.redis
        entry_id = delivery.envelope.entry_id
        turn = getattr(delivery.envelope.event, "turn_id", "")
        attempts = await redis.hincrby(ATTEMPTS, entry_id, 1)
        await redis.rpush(TIMES + entry_id, repr(time.time()))
        if turn in options.reject_turns:
            raise Reject("this turn cannot be answered")
        if turn in options.fail_turns or attempts <= options.fail_times:
            raise RuntimeError(f"failure {attempts} of {turn}")
        if attempts <= options.fail_times + options.wait_times:
            raise Retry(options.wait_seconds, reason="waiting for our turn")
        if attempts <= options.slow_times:
            await asyncio.sleep(options.slow_seconds)  # simulated slow work, past a timeout
        if options.work_seconds:
            await asyncio.sleep(options.work_seconds)
        settled = await RECORD.run(
            redis, [delivery.key, COMPLETIONS], [delivery.group, delivery.consumer, entry_id]
        )
        if settled == -1:
            await redis.hincrby(FENCED, entry_id, 1)
            return
        await redis.rpush(ORDER, turn)

    return handle
