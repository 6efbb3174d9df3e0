"""The respond group: a turn.ready becomes a reply, from a Responder.

One Responder protocol, implementations chosen by RESPONDER (pick_responder). A completed
answer is stored under `session_id:turn_id` before its reply is claimed, so a turn retried
after a crash is never answered twice by the AI.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import msgspec
import structlog
from redis.asyncio.client import Pipeline

from ingest.payload import Message
from processors.graph import Graph
from processors.runtime import ACKED, REDIS_TIMEOUT_S, Delivery, HandlerContext, Retry
from processors.turns import (
    STATE_FIELDS,
    Claim,
    Outcome,
    is_held,
    parse_state,
    session_ttl,
    settle_turn,
)
from zapstream.envelope import decode_fields
from zapstream.events import MessageReceived, TurnReady
from zapstream.keys import (
    context_key,
    conversation_key,
    partition_for,
    reply_key,
    session_key,
    stream_key,
    typing_key,
)
from zapstream.metrics import Metrics
from zapstream.topology import Topology

log = structlog.get_logger()

# How long a turn waits before looking again whether the turn before it is settled.
ORDER_WAIT_S = 0.05
# The typing indicator is a courtesy: it never holds a turn up for longer than this.
TYPING_TIMEOUT_S = 2.0
TYPING_MARK_S = 60  # how long a turn's typing marker (typing shown once) is kept


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """What a responder answers: the customer's unanswered messages, and earlier turns."""

    session_id: str
    turn_id: str
    messages: list[str]  # each message described as text, oldest first
    kinds: list[str]  # WhatsApp's type of each
    context: list[str]  # earlier turns, oldest first: "customer: ...", "assistant: ..."


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    body: str
    tokens: int = 0
    handoff: bool = False  # the customer asked for a human


class Responder(Protocol):
    """Answers a turn. A responder whose `costly` is False (rules) has its answers stored
    with their claim only; any other's are stored the moment they arrive (responder.py)."""

    async def answer(self, prompt: Prompt) -> Answer: ...


def describe(message: MessageReceived) -> str:
    """A message as text for the AI: its body or caption, or what it is."""
    try:
        view = msgspec.json.decode(message.data, type=Message)
    except msgspec.DecodeError:
        return f"[{message.kind}]"
    if view.text is not None:
        return view.text.body
    media = view.image or view.video or view.audio or view.document or view.sticker
    if media is not None:
        return f"[{message.kind}] {media.caption}" if media.caption else f"[{message.kind}]"
    if view.location is not None:
        place = ", ".join(p for p in (view.location.name, view.location.address) if p)
        return f"[location] {place}".rstrip()
    if view.interactive is not None:
        choice = view.interactive.button_reply or view.interactive.list_reply
        return choice.title if choice else "[interactive]"
    if view.button is not None:
        return view.button.text
    return f"[{message.kind}]"


_answer_decoder = msgspec.json.Decoder(Answer)


async def on_turn_ready(ctx: HandlerContext, delivery: Delivery) -> str | None:
    """Answer a turn once the session's previous turn is settled; claim or supersede it."""
    turn = delivery.envelope.event
    if not isinstance(turn, TurnReady):
        return None
    topology, redis = ctx.topology, ctx.redis
    partition = partition_for(
        conversation_key(turn.phone_number_id, turn.customer), topology.partitions
    )
    number = int(turn.turn_id)
    # One round trip for what a turn usually needs: the session's state, a stored answer,
    # the AI's context, the turn's own messages, and the turn's typing marker (set here, so
    # that typing shows once per turn).
    typing = typing_key(topology, turn.session_id, turn.turn_id, partition)
    can_type = _can_type(ctx)
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(session_key(topology, turn.session_id, partition), STATE_FIELDS)
    pipe.get(reply_key(topology, turn.session_id, turn.turn_id, partition))
    pipe.lrange(context_key(topology, turn.session_id, partition), 0, -1)
    if can_type:
        pipe.set(typing, 1, ex=TYPING_MARK_S, nx=True)
    _read_entries(pipe, topology, partition, turn.entry_ids)
    async with asyncio.timeout(REDIS_TIMEOUT_S):
        values, stored, context, *found = await pipe.execute()
    first_try = bool(found.pop(0)) if can_type else False
    state = parse_state(values)
    if state.answered >= number:
        return None  # settled before (a redelivery)
    if state.answered < number - 1:
        if first_try:  # typing shows when this turn's time comes
            await redis.delete(typing)
        raise Retry(ORDER_WAIT_S, reason=f"turn {number} waits for turn {number - 1}")

    entry_ids = state.unanswered + turn.entry_ids
    messages = _messages(found)
    if state.unanswered:  # messages of superseded turns, answered with this one
        messages = await _read_messages(ctx, partition, state.unanswered) + messages
    newest = max((m.timestamp for m in messages), default=0)
    hold = ""
    if is_held(state, number):
        hold = "handoff"  # a human has the conversation: no AI call
    elif newest and time.time() - newest >= topology.send.window:
        hold = "window_closed"  # no free-form reply may be sent: do not ask the AI
    answer, store = Answer(body=""), b""
    if not hold:
        # Typing shows while the AI works; the claim waits for it, so that the indicator
        # never reaches the customer after the reply.
        shown = asyncio.create_task(_show_typing(ctx, turn, messages, first_try))
        try:
            answer, store = await _answer(ctx, turn, messages, stored, context)
        finally:
            await shown
    arrivals = [int(e.split("-", 1)[0]) for e in entry_ids]  # entry ids' ms
    claim = Claim(
        group=delivery.group,
        consumer=delivery.consumer,
        entry_id=delivery.envelope.entry_id,
        session_id=turn.session_id,
        turn_number=number,
        reply_id=f"{turn.session_id}:{turn.turn_id}",
        body=answer.body,
        tokens=answer.tokens,
        unanswered=entry_ids,
        oldest_unanswered_ms=min(arrivals, default=0),
        message_ids=[m.message_id for m in messages],
        phone_number_id=turn.phone_number_id,
        customer=turn.customer,
        context=[*(f"customer: {describe(m)}" for m in messages), f"assistant: {answer.body}"],
        newest_timestamp=newest,
        received_ms=max(arrivals, default=0),
        handoff=answer.handoff,
        hold=hold,
        answer=store,
    )
    outcome = await settle_turn(redis, topology, partition, claim)
    if outcome == "wait":
        raise Retry(ORDER_WAIT_S, reason=f"turn {number} waits for turn {number - 1}")
    if outcome == "fenced":
        return None  # the runtime's fenced ack counts it
    _count_settled(ctx.metrics, outcome, claim, len(turn.message_ids))
    log.info(
        "turn_settled",
        outcome=outcome,
        tokens=answer.tokens,
        messages=len(messages),
        handoff=answer.handoff,
        hold=hold,
    )
    return ACKED  # turns.lua acked the turn.ready entry with its outcome


def _count_settled(metrics: Metrics, outcome: Outcome, claim: Claim, merged: int) -> None:
    """Count a turn this consumer settled (a redelivery settled before, or a fenced one, is
    counted by whoever settled it)."""
    if outcome not in ("generated", "superseded", "blocked"):
        return
    metrics.turn_messages.observe(merged)
    if outcome == "superseded":
        metrics.replies_superseded.inc()
        metrics.superseded_tokens.inc(claim.tokens)
    elif outcome == "blocked":
        # turns.lua holds a session a human took over meanwhile even when we did not.
        metrics.held(claim.hold or "handoff").inc()


async def _answer(
    ctx: HandlerContext,
    turn: TurnReady,
    messages: list[MessageReceived],
    stored: bytes | None,
    context: list[bytes],
) -> tuple[Answer, bytes]:
    """The turn's answer, and what the claim is to store of it (empty: stored already).

    The stored one if the AI completed it before, else a new one. A new answer is stored by
    the claim (turns.lua) before its reply.generated; one from a costly responder (an AI) is
    stored at once too, so that a crash before the claim does not pay for it again."""
    if stored is not None:
        return _answer_decoder.decode(stored), b""
    topology, redis = ctx.topology, ctx.redis
    prompt = Prompt(
        session_id=turn.session_id,
        turn_id=turn.turn_id,
        messages=[describe(m) for m in messages],
        kinds=[m.kind for m in messages],
        context=[item.decode() for item in context],
    )
    answer: Answer = await ctx.responder.answer(prompt)
    ctx.metrics.ai_tokens.inc(answer.tokens)
    encoded = msgspec.json.encode(answer)
    if not getattr(ctx.responder, "costly", True):
        return answer, encoded
    partition = partition_for(
        conversation_key(turn.phone_number_id, turn.customer), topology.partitions
    )
    cached = reply_key(topology, turn.session_id, turn.turn_id, partition)
    if not await redis.set(cached, encoded, ex=session_ttl(topology), nx=True):
        answer = _answer_decoder.decode(await redis.get(cached) or b"")
    return answer, b""


def _can_type(ctx: HandlerContext) -> bool:
    """Typing needs the send settings: a worker without an access token (or without a Cloud
    API client) skips it."""
    return ctx.graph is not None and bool(ctx.settings.access_token)


async def _show_typing(
    ctx: HandlerContext, turn: TurnReady, messages: list[MessageReceived], first_try: bool
) -> None:
    """Mark the turn's messages read and show typing, once per turn (the first try set the
    turn's typing marker), while the AI works. A courtesy: a failure is logged and the turn
    goes on."""
    if not (messages and first_try):
        return
    graph: Graph = ctx.graph
    try:
        await graph.mark_read(
            turn.phone_number_id, messages[-1].message_id, typing=True, timeout=TYPING_TIMEOUT_S
        )
    except Exception as err:  # the answer matters, the indicator does not
        log.warning("typing_failed", error=f"{type(err).__name__}: {err}")


def _read_entries(pipe: Pipeline, topology: Topology, partition: int, ids: list[str]) -> None:
    key = stream_key(topology, "messages", partition)
    for entry_id in ids:
        pipe.xrange(key, entry_id, entry_id)


def _messages(found: list[Any]) -> list[MessageReceived]:
    """The messages of XRANGE replies, in order (an entry trimmed away is skipped)."""
    messages = []
    for entries in found:
        for _, fields in entries:
            event = decode_fields(fields)
            if isinstance(event, MessageReceived):
                messages.append(event)
    return messages


async def _read_messages(
    ctx: HandlerContext, partition: int, entry_ids: list[str]
) -> list[MessageReceived]:
    """The messages of these entries, oldest first."""
    pipe = ctx.redis.pipeline(transaction=False)
    _read_entries(pipe, ctx.topology, partition, entry_ids)
    async with asyncio.timeout(REDIS_TIMEOUT_S):
        return _messages(await pipe.execute())
