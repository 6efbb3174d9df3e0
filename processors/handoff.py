"""Handoff to a human: the handoff group, and `zapstream handoff list | release`.

A reply that asks for a human holds its session (turns.lua): messages are still logged and
turns still cut, but they are settled as reply.blocked (reason handoff) with no AI call. The
handoff group POSTs each handoff.requested and handoff.released to HANDOFF_WEBHOOK_URL, signed
with HANDOFF_WEBHOOK_SECRET, retried like a send; with no URL set, handoffs are only recorded.
`release` hands the session back; turns cut while it was held are never answered.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import structlog
from redis.asyncio import Redis

from processors.graph import retry_after
from processors.runtime import Delivery, HandlerContext, Reject
from processors.send import SendFailed
from zapstream.events import TYPE_NAMES, HandoffReleased, HandoffRequested
from zapstream.keys import held_key, session_key, stream_key
from zapstream.scripts import Script
from zapstream.signing import sign
from zapstream.topology import Topology

log = structlog.get_logger()

RELEASE = Script(Path(__file__).with_name("release.lua"))
SIGNATURE_HEADER = "X-Zapstream-Signature-256"
TIMEOUT_S = 10.0


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """The body POSTed to HANDOFF_WEBHOOK_URL."""

    type: str  # handoff.requested or handoff.released
    session_id: str
    turn_id: str
    phone_number_id: str
    customer: str
    entry_id: str  # the event's entry in the log; also the Idempotency-Key header


async def on_handoff(ctx: HandlerContext, delivery: Delivery) -> None:
    event = delivery.envelope.event
    if not isinstance(event, HandoffRequested | HandoffReleased):
        return
    kind = TYPE_NAMES[type(event)]
    log.info("handoff", type=kind, customer=event.customer)
    url = ctx.settings.handoff_webhook_url
    if not url:
        return
    body = msgspec.json.encode(
        Notice(
            type=kind,
            session_id=event.session_id,
            turn_id=event.turn_id,
            phone_number_id=event.phone_number_id,
            customer=event.customer,
            entry_id=delivery.envelope.entry_id,
        )
    )
    headers = {"Content-Type": "application/json", "Idempotency-Key": delivery.envelope.entry_id}
    if ctx.settings.handoff_webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, ctx.settings.handoff_webhook_secret)
    try:
        response = await ctx.http.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.TransportError as err:  # timeouts included: the receiver dedups by the key
        raise SendFailed(f"handoff webhook unreachable: {type(err).__name__}: {err}") from err
    if response.is_success:
        return
    reason = f"handoff webhook answered {response.status_code}: {response.text[:200]}"
    if response.status_code in (408, 425, 429) or response.status_code >= 500:
        raise SendFailed(reason, retry_after=retry_after(response.headers.get("retry-after")))
    raise Reject(reason)


class Held(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    turn_id: str
    phone_number_id: str
    customer: str
    since: int  # Unix seconds


async def held_sessions(redis: Redis, topology: Topology) -> list[Held]:
    """Every session a human holds, oldest first."""
    found: list[Held] = []
    for partition in range(topology.partitions):
        for session, details in (await redis.hgetall(held_key(topology, partition))).items():
            values = msgspec.json.decode(details)
            name = session.decode() if isinstance(session, bytes) else session
            found.append(Held(session_id=name, **values))
    return sorted(found, key=lambda held: (held.since, held.session_id))


async def release(redis: Redis, topology: Topology, session_id: str) -> str | None:
    """Hand a held session back to the AI; the handoff.released entry id, None if not held."""
    for partition in range(topology.partitions):
        if not await redis.hexists(held_key(topology, partition), session_id):
            continue
        keys = [
            held_key(topology, partition),
            session_key(topology, session_id, partition),
            stream_key(topology, "handoffs", partition),
        ]
        entry_id = await RELEASE.run(redis, keys, [session_id])
        return entry_id.decode() if entry_id else None
    return None
