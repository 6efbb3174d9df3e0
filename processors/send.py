"""The send group: a reply.generated becomes WhatsApp messages, each sent once.

Every part of a reply has an idempotency record (send.lua) written before its POST and
completed after it, and carries its part id as `biz_opaque_callback_data`. A part whose POST
got no answer (a crash, a timeout) is *in doubt*: Meta may or may not have it. The settle
group (settle.py) completes it from the part's `sent` status webhook; if none comes within
`send.doubt`, the part is resent once. The one window that stays open: Meta took the POST but
its status webhook arrives later than `send.doubt` (or never): then the resend is a double.

Meta's refusals are handled by WhatsApp's error.code (ACTIONS below), never by the HTTP
status. Sends are paced by two shared GCRA buckets in Redis (ratelimit.lua): per business
number, and WhatsApp's pair limit per customer. Outcomes are appended once (outcome.lua):
reply.sent, reply.failed or reply.blocked.
"""

from __future__ import annotations

import asyncio
import enum
import time
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis

from ingest.append import outbound_field
from processors.graph import Graph, GraphError, GraphNoAnswer, GraphUnreachable
from processors.runtime import (
    REDIS_TIMEOUT_S,
    Delivery,
    HandlerContext,
    Reject,
    Retry,
    acked,
    queue_ack,
)
from zapstream.envelope import encode_fields
from zapstream.events import Event, ReplyBlocked, ReplyFailed, ReplyGenerated, ReplySent
from zapstream.keys import (
    burst_key,
    conversation_key,
    conversation_record_key,
    doubt_key,
    outcome_key,
    pair_key,
    part_id,
    partition_for,
    paused_key,
    rate_key,
    send_key,
    session_key,
    stream_key,
)
from zapstream.scripts import Batch, Script
from zapstream.topology import RateLimit, Topology

log = structlog.get_logger()

SEND = Script(Path(__file__).with_name("send.lua"))
OUTCOME = Script(Path(__file__).with_name("outcome.lua"))
RATE = Script(Path(__file__).with_name("ratelimit.lua"))

# Idempotency records and outcome markers outlive Meta's 7-day redelivery horizon.
RECORD_TTL_S = 8 * 86400
# The pair limit's wait after a 131056: 4^x seconds (Meta's advice), x = refusals so far.
PAIR_WAIT_MAX_S = 256.0


class Action(enum.Enum):
    RETRY = "retry"  # throughput or transient: retried with backoff, honouring Retry-After
    PAIR_LIMIT = "pair_limit"  # too many to this customer: that customer waits, others go on
    BLOCKED = "blocked"  # the 24-hour window is closed: reply.blocked, never retried
    FAILED = "failed"  # a business outcome: reply.failed with the code, never retried
    PAUSE = "pause"  # auth, permission or account trouble: every send pauses, with an alert


# WhatsApp error.code -> what the sender does (REFERENCE.md §5.4). Unknown codes are
# dead-lettered for a person to look at.
ACTIONS: dict[int, Action] = {
    130429: Action.RETRY,  # the number's throughput exceeded
    131000: Action.RETRY,  # something went wrong
    131016: Action.RETRY,  # service unavailable
    1: Action.RETRY,  # API unknown
    2: Action.RETRY,  # API service
    133004: Action.RETRY,  # server temporarily unavailable
    131057: Action.RETRY,  # account in maintenance
    80007: Action.RETRY,  # WABA rate limit
    4: Action.RETRY,  # app API-call rate limit
    131056: Action.PAIR_LIMIT,
    131047: Action.BLOCKED,  # more than 24 hours since the customer wrote
    131026: Action.FAILED,  # undeliverable
    130403: Action.FAILED,  # the business blocked this user
    131049: Action.FAILED,  # marketing cap for this user
    131050: Action.FAILED,  # the user opted out of marketing
    130472: Action.FAILED,  # part of an experiment
    131051: Action.FAILED,  # unsupported message type
    131008: Action.FAILED,  # a required parameter is missing
    131009: Action.FAILED,  # a parameter value is invalid
    100: Action.FAILED,  # invalid parameter
    190: Action.PAUSE,  # access token expired
    0: Action.PAUSE,  # auth exception
    10: Action.PAUSE,  # permission denied
    131005: Action.PAUSE,  # access denied
    368: Action.PAUSE,  # account restricted for policy violations
    131031: Action.PAUSE,  # account locked
    131048: Action.PAUSE,  # spam rate limit: the number is restricted
    131042: Action.PAUSE,  # payment method problem
    **{code: Action.PAUSE for code in range(200, 300)},  # permission errors
}


def code_label(code: int | None) -> str:
    """WhatsApp's error code as a metric label: a code of ACTIONS, `other`, or empty when
    the answer had none (a bounded set, whatever Meta sends)."""
    if code is None:
        return ""
    return str(code) if code in ACTIONS else "other"


def action_for(error: GraphError) -> Action | None:
    """What to do about a refusal; None for an unknown code (dead-lettered)."""
    if error.code is None:
        # No WhatsApp error in the answer (a proxy's 502, an overloaded front end).
        return Action.RETRY if error.status == 429 or error.status >= 500 else None
    return ACTIONS.get(error.code)


class SendFailed(Exception):
    """A transient refusal: counted as a failure, retried no sooner than `retry_after`."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def split_text(body: str, limit: int) -> list[str]:
    """The body as parts of at most `limit` characters, cut at a paragraph, a line, a
    sentence or a word where one falls in the second half of the part."""
    parts: list[str] = []
    rest = body.strip()
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for separator in ("\n\n", "\n", ". ", "! ", "? ", " "):
            at = window.rfind(separator)
            if at >= limit // 2:
                cut = at + len(separator)
                break
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


class Bucket:
    """A GCRA bucket in Redis (ratelimit.lua)."""

    def __init__(self, key: str, limit: RateLimit) -> None:
        self.key = key
        self.interval_us = max(1, int(limit.per * 1_000_000 / limit.rate))
        self.burst = limit.burst

    def args(self, op: str, push_s: float = 0.0) -> list[str | int]:
        """ratelimit.lua's arguments for `op`; its answer is microseconds to wait."""
        return [op, self.interval_us, self.burst, int(push_s * 1_000_000)]

    async def push(self, redis: Redis, seconds: float) -> None:
        """Let nothing through for `seconds` (WhatsApp's 131056)."""
        await RATE.run(redis, [self.key], self.args("push", seconds))


async def on_reply_generated(ctx: HandlerContext, delivery: Delivery) -> str | None:
    """Send a generated reply, part by part, and append its outcome once."""
    reply = delivery.envelope.event
    if not isinstance(reply, ReplyGenerated):
        return None  # the outcomes of replies share the stream
    return await Sender(ctx, reply, delivery).send()


class Sender:
    """One reply on its way: its keys, its parts, and the decisions about each.

    Round trips of a one-part reply: the checks with the part's record and the buckets; the
    pair's send with the record's `begin`; the POST; the record's `sent` with the outcome
    and the entry's ack.
    """

    def __init__(self, ctx: HandlerContext, reply: ReplyGenerated, delivery: Delivery) -> None:
        self.ctx = ctx
        self.delivery = delivery
        self.redis: Redis = ctx.redis
        self.topology: Topology = ctx.topology
        self.reply = reply
        conversation = conversation_key(reply.phone_number_id, reply.customer)
        self.partition = partition_for(conversation, self.topology.partitions)
        self.conversation_record = conversation_record_key(
            self.topology, conversation, self.partition
        )
        limits = self.topology.rate_limits
        self.number = Bucket(rate_key(self.topology, reply.phone_number_id), limits.per_number)
        self.pair = Bucket(
            pair_key(self.topology, conversation, self.partition), limits.per_customer
        )
        self.graph: Graph = ctx.graph

    async def send(self) -> str | None:
        """Send every part and append the outcome; ACKED when the entry's ack went with it."""
        reply, topology = self.reply, self.topology
        age = time.time() - reply.newest_timestamp
        if reply.newest_timestamp and age >= topology.send.window:
            await self._blocked()
            log.info("reply_blocked", reason="window_closed", age_s=round(age))
            return None
        # One round trip for the checks (settled before? paused? has the customer written
        # since? then the reply quotes what it answers) and what the first part needs.
        batch = Batch(self.redis)
        batch.command.exists(outcome_key(topology, reply.reply_id, self.partition))
        batch.command.pttl(paused_key(topology))
        batch.command.hget(session_key(topology, reply.session_id, self.partition), "turns")
        batch.command.zcard(burst_key(topology, reply.session_id, self.partition))
        self._look(batch, 0)
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            settled, paused, cut, waiting, *look = await batch.execute()
        if settled:
            return None  # settled before (a redelivery)
        if paused > 0:
            raise Retry(paused / 1000, reason="sending is paused (see the sender_paused alert)")
        newer = int(cut or 0) > int(reply.turn_id) or waiting > 0
        quote = reply.message_ids[-1] if newer and reply.message_ids else ""

        parts = split_text(reply.body, topology.send.max_chars)
        wamids: list[str] = []
        resent = 0
        for index, text in enumerate(parts):
            if index:
                batch = Batch(self.redis)
                self._look(batch, index)
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    look = await batch.execute()
            wamid, again, posted = await self._send_part(
                index, text, quote if index == 0 else "", look
            )
            if not wamid:
                return None  # a business outcome was appended
            wamids.append(wamid)
            resent += again
            if posted and index < len(parts) - 1:
                await SEND.run(self.redis, *self._sent_call(index, wamid))
        # The last part's `sent`, the outcome and the ack: one round trip. (Should Redis have
        # lost its scripts, `sent` runs again after the other two: a crash between them
        # leaves the part in doubt, listed, until its `sent` status settles it.)
        outcome = ReplySent(
            session_id=reply.session_id,
            turn_id=reply.turn_id,
            reply_id=reply.reply_id,
            message_id=wamids[0],
            wamids=wamids,
            resent=resent,
        )
        batch = Batch(self.redis)
        if posted:
            batch.script(SEND, *self._sent_call(len(parts) - 1, wamids[-1]))
        batch.script(OUTCOME, *self._finish_call(outcome))
        queue_ack(batch, self.ctx, self.delivery)
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            *_, entry_id, ack = await batch.execute()
        if entry_id is not None and reply.received_ms:
            self.ctx.metrics.reply_latency.observe(time.time() - reply.received_ms / 1000)
        log.info("reply_sent", parts=len(parts), wamid=wamids[0], resent=resent)
        return acked(ack)

    def _record_keys(self, part: str) -> list[str]:
        return [
            send_key(self.topology, part, self.partition),
            doubt_key(self.topology, self.partition),
            self.conversation_record,
        ]

    def _look(self, batch: Batch, index: int) -> None:
        """Queue what deciding on part `index` needs: its record, whether the customer's
        pair bucket has room, and a send taken from the number's bucket. Taken before the
        record is read, a send not made (a redelivery, a wait) is not given back: the
        limits err on the slow side only."""
        record = send_key(self.topology, part_id(self.reply.reply_id, index), self.partition)
        batch.command.hmget(record, ["state", "wamid"])
        batch.script(RATE, [self.pair.key], self.pair.args("peek"))
        batch.script(RATE, [self.number.key], self.number.args("take"))

    def _sent_call(self, index: int, wamid: str) -> tuple[list[str], list[Any]]:
        part = part_id(self.reply.reply_id, index)
        args = ["sent", part, wamid, outbound_field(wamid), self.reply.session_id, "post"]
        return self._record_keys(part), args

    async def _send_part(
        self, index: int, text: str, quote: str, look: list[Any]
    ) -> tuple[str, int, bool]:
        """(wamid, 1 if resent else 0, whether it was POSTed now and its record still says
        `posting`) once the part is sent; ('', 0, False) when an outcome ended the reply.
        `look` is what _look queued. Raises Retry to wait, SendFailed to back off, Reject to
        dead-letter."""
        part = part_id(self.reply.reply_id, index)
        keys = self._record_keys(part)
        (before, wamid), pair_wait, number_wait = look
        if before == b"sent" and isinstance(wamid, bytes):
            return wamid.decode(), 0, False
        # A part in doubt (`posting`) is resent, rarely, without taking from the pair bucket.
        fresh = before != b"posting"
        if fresh and pair_wait:
            raise Retry(int(pair_wait) / 1e6, reason="pair limit: waiting for this customer")
        if fresh and number_wait:
            raise Retry(int(number_wait) / 1e6, reason="the business number's send rate")
        doubt_ms = int(self.topology.send.doubt * 1000)
        batch = Batch(self.redis)
        if fresh:
            batch.script(RATE, [self.pair.key], self.pair.args("take"))
        batch.script(SEND, keys, ["begin", part, doubt_ms, RECORD_TTL_S])
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            *taken, (state, *detail) = await batch.execute()
        state = state.decode()
        if taken and taken[0] and state == "go":
            # Another send to this customer took the room since the peek: nothing was sent.
            await SEND.run(self.redis, keys, ["clear", part])
            raise Retry(int(taken[0]) / 1e6, reason="pair limit: waiting for this customer")
        if state == "sent":
            return detail[0].decode(), 0, False
        if state == "failed":
            await self._failed(int(detail[0]), "failed status of a part in doubt")
            return "", 0, False
        if state == "doubt":
            raise Retry(int(detail[0]) / 1000, reason=f"part {part} is in doubt: its status")
        if state == "lost":
            raise Reject(f"part {part} still in doubt after its one resend: check it by hand")
        resent = 1 if state == "resend" else 0
        if resent:
            self.ctx.metrics.parts_resent.inc()
            log.warning("part_resent", part=part, reason="no status within send.doubt")
        try:
            wamid = await self.graph.send_text(
                self.reply.phone_number_id,
                self.reply.customer,
                text,
                timeout=self.topology.send.timeout,
                quote=quote,
                callback=part,
            )
        except GraphError as error:
            await SEND.run(self.redis, keys, ["clear", part])
            await self._refused(error)
            return "", 0, False
        except GraphUnreachable as err:  # never reached Meta: nothing was sent
            await SEND.run(self.redis, keys, ["clear", part])
            self.ctx.metrics.sent("unreachable").inc()
            raise SendFailed(f"Graph API unreachable: {err}") from err
        except GraphNoAnswer as err:  # no answer, or one we cannot read
            # Meta may have it: the part stays in doubt until its status or send.doubt.
            self.ctx.metrics.sent("in_doubt").inc()
            log.warning("part_in_doubt", part=part, error=f"{type(err).__name__}: {err}")
            raise Retry(self.topology.send.doubt, reason=f"part {part} in doubt") from err
        self.ctx.metrics.sent("sent").inc()
        return wamid, resent, True

    async def _refused(self, error: GraphError) -> None:
        """Act on a refusal by its WhatsApp error code; returns only once an outcome is in."""
        action = action_for(error)
        reply = self.reply
        self.ctx.metrics.sent(action.value if action else "unknown", code_label(error.code)).inc()
        if action is Action.RETRY:
            raise SendFailed(str(error), retry_after=error.retry_after)
        if action is Action.PAIR_LIMIT:
            refusals = await self.redis.hincrby(
                send_key(self.topology, reply.reply_id, self.partition), "pair_refusals", 1
            )
            await self.redis.expire(
                send_key(self.topology, reply.reply_id, self.partition), RECORD_TTL_S
            )
            wait = max(error.retry_after, min(PAIR_WAIT_MAX_S, 4.0 ** (refusals - 1)))
            await self.pair.push(self.redis, wait)
            log.warning("pair_limited", code=error.code, wait_s=wait)
            raise Retry(wait, reason="pair limit (131056): this customer waits")
        if action is Action.PAUSE:
            pause = self.topology.send.pause
            await self.redis.set(paused_key(self.topology), str(error), px=int(pause * 1000))
            self.ctx.metrics.sender_paused.inc()
            log.error("sender_paused", code=error.code, reason=str(error), pause_s=pause)
            raise Retry(pause, reason=f"sending paused: {error}")
        if action is Action.BLOCKED:
            await self._blocked()
            log.info("reply_blocked", reason="window_closed", code=error.code)
            return
        if action is Action.FAILED:
            await self._failed(error.code or 0, error.title)
            return
        raise Reject(f"unknown WhatsApp error: {error}")

    async def _blocked(self) -> None:
        """The 24-hour window is closed: reply.blocked, counted once."""
        reply = self.reply
        blocked = ReplyBlocked(
            session_id=reply.session_id,
            turn_id=reply.turn_id,
            reply_id=reply.reply_id,
            reason="window_closed",
        )
        if await self.finish(blocked):
            self.ctx.metrics.held("window_closed").inc()

    async def _failed(self, code: int, reason: str) -> None:
        reply = self.reply
        await self.finish(
            ReplyFailed(
                session_id=reply.session_id,
                turn_id=reply.turn_id,
                reply_id=reply.reply_id,
                code=code,
                reason=reason,
            )
        )
        log.info("reply_failed", code=code, reason=reason)

    def _finish_call(self, outcome: Event) -> tuple[list[str], list[str | int]]:
        """outcome.lua's keys and arguments: append `outcome` unless one was before."""
        fields: list[str | int] = [RECORD_TTL_S]
        for name, value in encode_fields(outcome).items():
            fields += [name, value]
        keys = [
            outcome_key(self.topology, self.reply.reply_id, self.partition),
            stream_key(self.topology, "replies", self.partition),
        ]
        return keys, fields

    async def finish(self, outcome: Event) -> bool:
        """Append the reply's outcome unless one was appended before; whether it was now."""
        entry_id = await OUTCOME.run(self.redis, *self._finish_call(outcome))
        return entry_id is not None
