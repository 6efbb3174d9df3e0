"""A running conversation for tests: messages appended as the webhook would, the debounce
group (and the respond group) running live in the test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from redis.asyncio import Redis

from processors.debounce import close_due_windows, on_message_received
from processors.responder import on_turn_ready
from processors.runtime import GroupRunner, HandlerContext
from zapstream.envelope import decode_fields, encode_fields
from zapstream.events import Event, MessageReceived, TurnReady
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.topology import Topology

MESSAGES = "zapstream:{p0}:messages"
REPLIES = "zapstream:{p0}:replies"
STATUSES = "zapstream:{p0}:statuses"
TURNS = "zapstream:{p0}:turns"
BUSINESS = "100000000000001"


def windows(make_topology: Callable[..., Topology], **debounce: object) -> Topology:
    """Short test windows: 300 ms quiet, 1.5 s max wait; debounce and respond groups."""
    return make_topology(
        debounce={"quiet": "300ms", "max_wait": "1500ms", **debounce},
        groups={
            "debounce": {"streams": ["messages"], "concurrency": 8, "idle": "2s"},
            "respond": {"streams": ["turns"], "concurrency": 8, "idle": "2s"},
        },
    )


def message(
    n: int,
    customer: str = "15550001111",
    kind: str = "text",
    ts: int | None = None,
    session: str | None = None,
) -> MessageReceived:
    """Message number `n` of a customer, sent at `ts` (default now: inside the 24-hour
    window); a text says `hi <n>`."""
    ts = int(time.time()) if ts is None else ts
    wamid = f"wamid.{customer}.{n}"
    data: dict[str, object] = {"from": customer, "id": wamid, "timestamp": str(ts), "type": kind}
    if kind == "text":
        data["text"] = {"body": f"hi {n}"}
    elif kind == "reaction":
        data["reaction"] = {"message_id": "wamid.out", "emoji": "\U0001f44d"}
    return MessageReceived(
        session_id=session or f"sess-{customer}",
        message_id=wamid,
        kind=kind,
        from_=customer,
        customer=customer,
        phone_number_id=BUSINESS,
        timestamp=ts,
        data=msgspec.json.encode(data).decode(),
    )


async def add(redis: Redis, event: Event, at_ms: int | None = None, stream: str = MESSAGES) -> str:
    """Append an entry now, or with an id at `at_ms` (an entry written that long ago)."""
    entry_id = "*" if at_ms is None else f"{at_ms}-*"
    result = await redis.xadd(stream, encode_fields(event), id=entry_id)  # type: ignore[arg-type]
    return result.decode()


async def turns(redis: Redis) -> list[TurnReady]:
    found = []
    for _, fields in await redis.xrange(TURNS):
        event = decode_fields(fields)
        assert isinstance(event, TurnReady)
        found.append(event)
    return found


@asynccontextmanager
async def debouncing(
    redis: Redis,
    topology: Topology,
    workers: int = 1,
    *,
    responder: Any = None,
    responders: int = 0,
) -> AsyncIterator[None]:
    """The debounce group running live (with its window closer) in this process; with
    `responders` > 0, the respond group too, answering with `responder`."""
    ctx = HandlerContext(
        redis=redis, settings=Settings(), topology=topology, metrics=Metrics(), responder=responder
    )
    runners = [
        GroupRunner(ctx, "debounce", on_message_received, tick=close_due_windows)
        for _ in range(workers)
    ]
    runners += [GroupRunner(ctx, "respond", on_turn_ready) for _ in range(responders)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        yield
    finally:
        for runner in runners:
            runner.stop()
        async with asyncio.timeout(30):  # grace periods are 10 s: a stop past 30 s is a bug
            await asyncio.gather(*tasks)


async def count_turns(redis: Redis, count: int) -> bool:
    return int(await redis.xlen(TURNS)) >= count if await redis.exists(TURNS) else False


async def pace(seconds: float) -> None:
    """The customer's typing rhythm: input timing, not synchronisation."""
    await asyncio.sleep(seconds)


async def replies(redis: Redis) -> list[Event]:
    return [decode_fields(fields) for _, fields in await redis.xrange(REPLIES)]


async def count_replies(redis: Redis, count: int) -> bool:
    return int(await redis.xlen(REPLIES)) >= count if await redis.exists(REPLIES) else False
