"""The debounce group: a customer's burst of messages becomes one turn.

Windows are timed on the entries' own times (the entry id's milliseconds), not on when a
worker reads them, and all their state is in Redis, changed only by debounce.lua: any worker
can close a due window, two racing workers emit one turn.ready, and a crash loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from processors.runtime import ACKED, Delivery, HandlerContext
from processors.turns import session_ttl
from zapstream.events import MessageReceived
from zapstream.keys import (
    burst_key,
    conversation_key,
    due_key,
    partition_for,
    session_key,
    stream_key,
)
from zapstream.scripts import Script
from zapstream.topology import Topology

DEBOUNCE = Script(Path(__file__).with_name("debounce.lua"))
DUE = Script(Path(__file__).with_name("due.lua"))
log = structlog.get_logger()

# Reactions and system notices are not questions: they neither open nor extend a turn.
NEVER_OPENS = frozenset({"reaction", "system"})
# How many due sessions one tick closes per partition; the rest wait for the next tick.
CLOSE_PER_TICK = 200


def _call(
    topology: Topology, partition: int, session_id: str, args: list[str | int]
) -> tuple[list[str], list[str | int]]:
    keys = [
        stream_key(topology, "messages", partition),
        due_key(topology, partition),
        stream_key(topology, "turns", partition),
        burst_key(topology, session_id, partition),
        session_key(topology, session_id, partition),
    ]
    debounce = topology.debounce
    ttl = session_ttl(topology)
    return keys, [
        *args[:4],
        session_id,
        *args[4:6],
        int(debounce.quiet * 1000),
        int(debounce.max_wait * 1000),
        ttl,
        *args[6:],
    ]


async def on_message_received(ctx: HandlerContext, delivery: Delivery) -> str | None:
    """Add a message to its session's burst; close what is due; ack, in one script."""
    event = delivery.envelope.event
    if not isinstance(event, MessageReceived) or event.kind in NEVER_OPENS:
        return None
    if not event.session_id:
        return None  # no session, no conversation to answer
    # What the customer wrote is theirs: it is logged at debug level only.
    log.debug("message_buffered", kind=event.kind, data=event.data)
    entry_id = delivery.envelope.entry_id
    partition = partition_for(
        conversation_key(event.phone_number_id, event.customer), ctx.topology.partitions
    )
    member = f"{event.timestamp}|{entry_id}|{event.message_id}"
    keys, args = _call(
        ctx.topology,
        partition,
        event.session_id,
        [
            "add",
            delivery.group,
            delivery.consumer,
            entry_id,
            member,
            int(entry_id.split("-", 1)[0]),
            event.phone_number_id,
            event.customer,
        ],
    )
    # -1: another consumer took the entry over; the runtime's fenced ack says so.
    emitted = await DEBOUNCE.run(ctx.redis, keys, args)
    return None if emitted == -1 else ACKED


async def close_due_windows(ctx: HandlerContext, group: str, partitions: Sequence[int]) -> None:
    """Close the turns that are due in these partitions (any worker may; each closes once)."""
    redis = ctx.redis
    for partition in partitions:
        sessions: list[Any] = await DUE.run(
            redis, [due_key(ctx.topology, partition)], [CLOSE_PER_TICK]
        )
        if not sessions:
            continue
        calls = [
            _call(
                ctx.topology, partition, session.decode(), ["close", group, "", "", "", 0, "", ""]
            )
            for session in sessions
        ]
        async with asyncio.timeout(5):
            await DEBOUNCE.run_many(redis, calls)
