"""How each turn ended, read from the log: the checks (and the short-windowed topology) that
the crash test and the chaos run share. A turn ends in exactly one terminal event
(reply.sent, .superseded, .blocked, .failed), or in the send group's dead letters: a reply
WhatsApp refused with a code nobody knows, or the one designed end that is not an event, a
part still in doubt after its one resend (send.py's `lost`, see tests/test_crash.py)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import NamedTuple

from redis.asyncio import Redis

from zapstream.envelope import decode_fields
from zapstream.events import TurnReady
from zapstream.topology import Topology

TERMINAL = {"reply.sent", "reply.superseded", "reply.blocked", "reply.failed"}
IN_DOUBT = "still in doubt after its one resend"
TURNS = "zapstream:{p0}:turns"
REPLIES = "zapstream:{p0}:replies"
DEAD_SEND = "zapstream:{p0}:dead:send"

Turn = tuple[str, str]  # (session_id, turn_id)


def killing_topology(
    make_topology: Callable[..., Topology],
    *,
    idle: str,
    backoff: tuple[str, str],
    send: dict[str, str],
) -> Topology:
    """Windows short enough that a run with processes killed takes minutes, not hours: a
    killed consumer's entries are taken over after `idle`, retries wait `backoff` (base, max),
    send limits never bind."""
    base, most = backoff
    group = {"idle": idle, "backoff": {"base": base, "factor": 2, "max": most}}
    return make_topology(
        debounce={"quiet": "300ms", "max_wait": "1s"},
        send=send,
        rate_limits={
            "per_number": {"rate": 2000, "per": "1s", "burst": 200},
            "per_customer": {"rate": 100, "per": "1s", "burst": 10},
        },
        groups={
            "debounce": {"streams": ["messages"], "concurrency": 16, **group},
            "respond": {"streams": ["turns"], "concurrency": 16, **group},
            "send": {"streams": ["replies"], "concurrency": 32, **group},
            "settle": {"streams": ["statuses"], "concurrency": 8, **group},
            "handoff": {"streams": ["handoffs"], "concurrency": 2, **group},
        },
    )


class DeadReply(NamedTuple):
    """A reply in the send group's dead letters."""

    session_id: str
    turn_id: str
    reply_id: str
    customer: str
    code: str  # dlq_code: whatsapp:<code>, rejected, timeout...
    error: str

    @property
    def turn(self) -> Turn:
        return (self.session_id, self.turn_id)

    @property
    def part(self) -> str:
        """The part still in doubt, for the designed end; '' for any other dead letter."""
        if IN_DOUBT not in self.error:
            return ""
        return self.error.split("part ", 1)[1].split(" ", 1)[0]


async def dead_replies(redis: Redis) -> list[DeadReply]:
    found = []
    for _, fields in await redis.xrange(DEAD_SEND):
        text = {k.decode(): v.decode() for k, v in fields.items()}
        found.append(
            DeadReply(
                session_id=text["session_id"],
                turn_id=text.get("turn_id", ""),
                reply_id=text.get("reply_id", ""),
                customer=text.get("customer", ""),
                code=text.get("dlq_code", ""),
                error=text["dlq_error"],
            )
        )
    return found


def lost(dead: list[DeadReply]) -> dict[Turn, str]:
    """(session, turn) -> part, of the replies dead-lettered still in doubt after their one
    resend."""
    return {reply.turn: reply.part for reply in dead if reply.part}


async def turns(redis: Redis) -> list[Turn]:
    found = []
    for _, fields in await redis.xrange(TURNS):
        event = decode_fields(fields)
        assert isinstance(event, TurnReady)
        found.append((event.session_id, event.turn_id))
    return found


async def ends(redis: Redis) -> collections.Counter[Turn]:
    """How many ends each turn has: its terminal events and its dead letters in `send`."""
    counted: collections.Counter[Turn] = collections.Counter()
    for _, fields in await redis.xrange(REPLIES):
        if fields[b"type"].decode() in TERMINAL:
            counted[(fields[b"session_id"].decode(), fields[b"turn_id"].decode())] += 1
    for reply in await dead_replies(redis):
        counted[reply.turn] += 1
    return counted


async def all_ended(redis: Redis, sessions: int) -> list[Turn] | None:
    """The turns, once at least `sessions` sessions have turns and every turn has ended;
    None while any has not. A turn with two ends fails at once."""
    cut = await turns(redis)
    counted = await ends(redis)
    twice = {turn: n for turn, n in counted.items() if n > 1}
    assert not twice, f"turns with more than one terminal event: {twice}"
    if len({session for session, _ in cut}) < sessions or any(t not in counted for t in cut):
        return None
    return cut
