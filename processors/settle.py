"""The settle group: status webhooks complete the reply parts left in doubt.

Each part is sent with its part id as `biz_opaque_callback_data`, and Meta echoes it in the
part's status webhooks. A `sent` (or later) status for a part still `posting` proves Meta took
it: the part is marked sent with that wamid, and the sender, waiting on the part, goes on
without resending. A `failed` status settles it as failed. Statuses of parts already complete
change nothing here (the projections read them from the log).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog

from ingest.append import outbound_field
from processors.runtime import REDIS_TIMEOUT_S, Delivery, HandlerContext, acked, queue_ack
from processors.send import SEND
from zapstream.events import StatusUpdated
from zapstream.keys import (
    conversation_key,
    conversation_record_key,
    doubt_key,
    partition_for,
    send_key,
)
from zapstream.scripts import Batch

log = structlog.get_logger()

DELIVERED = frozenset({"sent", "delivered", "read", "played"})


class _StatusError(msgspec.Struct, frozen=True):
    code: int = 0


class _Status(msgspec.Struct, frozen=True):
    biz_opaque_callback_data: str = ""
    errors: list[_StatusError] = []


_status_decoder = msgspec.json.Decoder(_Status)


def session_of(part: str) -> str:
    """The session id in a part id `session_id:turn_id#part`."""
    return part.rpartition("#")[0].rpartition(":")[0]


async def on_status(ctx: HandlerContext, delivery: Delivery) -> str | None:
    status = delivery.envelope.event
    if not isinstance(status, StatusUpdated):
        return None
    try:
        detail = _status_decoder.decode(status.data)
    except msgspec.DecodeError:
        return None  # not one of our parts: nothing to settle
    part = detail.biz_opaque_callback_data
    if "#" not in part:
        return None
    topology = ctx.topology
    conversation = conversation_key(status.phone_number_id, status.customer)
    partition = partition_for(conversation, topology.partitions)
    keys = [
        send_key(topology, part, partition),
        doubt_key(topology, partition),
        conversation_record_key(topology, conversation, partition),
    ]
    args: list[Any]
    if status.status in DELIVERED:
        args = ["sent", part, status.message_id, outbound_field(status.message_id)]
        args += [session_of(part), "status"]
    elif status.status == "failed":
        code = detail.errors[0].code if detail.errors else 0
        args = ["failed", part, code]
    else:
        return None
    # The record's change and the entry's ack: one round trip.
    batch = Batch(ctx.redis)
    batch.script(SEND, keys, args)
    queue_ack(batch, ctx, delivery)
    async with asyncio.timeout(REDIS_TIMEOUT_S):
        before, ack = await batch.execute()
    if before == b"posting":
        ctx.metrics.parts_settled_by_status.inc()
        log.info("part_settled_by_status", part=part, status=status.status)
    return acked(ack)
