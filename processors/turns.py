"""Turns of one session: answered one at a time, in turn order; supersede decided at claim.

settle_turn() runs turns.lua: it settles turn n only after turn n-1, and in the same step
either claims the reply for sending (reply.generated) or, when the customer wrote again
meanwhile and the policy is `supersede`, discards it (reply.superseded) so that the next turn
answers every unanswered message together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from zapstream.keys import (
    burst_key,
    context_key,
    held_key,
    reply_key,
    session_key,
    stream_key,
)
from zapstream.scripts import Script
from zapstream.topology import Topology

TURNS = Script(Path(__file__).with_name("turns.lua"))

# Earlier turns kept for the AI, per session: customer messages and replies, newest last.
CONTEXT_ITEMS = 20

Outcome = Literal["generated", "superseded", "blocked", "done", "wait", "fenced"]


class TurnState(msgspec.Struct, frozen=True, kw_only=True):
    """What the session's state says before a turn is answered."""

    answered: int  # the last settled turn number
    unanswered: list[str]  # entry ids of messages of superseded turns, oldest first
    oldest_unanswered_ms: int  # entry time of the oldest of them; 0 when none
    held: bool = False  # a human holds the session (handoff), or held it when this turn was cut
    released_after: int = 0  # turns cut up to a handoff's release: never answered


def session_ttl(topology: Topology) -> int:
    return int(topology.sessions.gap + topology.debounce.max_wait) + 86400


STATE_FIELDS = ["answered", "unanswered", "oldest_unanswered", "handoff", "released_after"]


def parse_state(values: list[Any]) -> TurnState:
    """The TurnState of an HMGET of STATE_FIELDS."""
    answered, unanswered, oldest, handoff, released_after = values
    return TurnState(
        answered=int(answered or 0),
        unanswered=msgspec.json.decode(unanswered) if unanswered else [],
        oldest_unanswered_ms=int(oldest) if oldest else 0,
        held=handoff == b"1",
        released_after=int(released_after or 0),
    )


def is_held(state: TurnState, turn_number: int) -> bool:
    """Whether the turn goes unanswered because a human holds, or held, the session."""
    return state.held or turn_number <= state.released_after


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A generated answer, ready to be claimed for sending or superseded."""

    group: str
    consumer: str
    entry_id: str  # the turn.ready entry
    session_id: str
    turn_number: int
    reply_id: str
    body: str
    tokens: int
    unanswered: list[str]  # entry ids of every message the reply answers
    oldest_unanswered_ms: int
    message_ids: list[str]
    phone_number_id: str
    customer: str
    context: list[str]  # items appended to the AI's context when the reply is sent
    newest_timestamp: int = 0  # WhatsApp timestamp of the newest message answered
    received_ms: int = 0  # when the newest message answered arrived (its entry id's ms)
    handoff: bool = False  # the answer asks for a human: hold the session once it is claimed
    hold: str = ""  # settle as reply.blocked with this reason instead (no answer was made)
    answer: bytes = b""  # the Answer (JSON) to store with the claim; empty: stored before


async def settle_turn(redis: Redis, topology: Topology, partition: int, claim: Claim) -> Outcome:
    keys = [
        stream_key(topology, "turns", partition),
        stream_key(topology, "replies", partition),
        session_key(topology, claim.session_id, partition),
        burst_key(topology, claim.session_id, partition),
        context_key(topology, claim.session_id, partition),
        stream_key(topology, "handoffs", partition),
        held_key(topology, partition),
        reply_key(topology, claim.session_id, str(claim.turn_number), partition),
    ]
    encode = msgspec.json.encode
    args = [
        claim.group,
        claim.consumer,
        claim.entry_id,
        claim.session_id,
        claim.turn_number,
        topology.debounce.policy,
        int(topology.debounce.max_wait * 1000),
        claim.reply_id,
        claim.body,
        claim.tokens,
        encode(claim.unanswered),
        claim.oldest_unanswered_ms,
        encode(claim.message_ids),
        claim.phone_number_id,
        claim.customer,
        encode(claim.context),
        CONTEXT_ITEMS,
        session_ttl(topology),
        "hold" if claim.hold else "answer",
        claim.hold,
        "1" if claim.handoff else "0",
        claim.newest_timestamp,
        claim.received_ms,
        claim.answer,
    ]
    return _OUTCOMES[await TURNS.run(redis, keys, args)]


_OUTCOMES: dict[bytes, Outcome] = {
    b"generated": "generated",
    b"superseded": "superseded",
    b"blocked": "blocked",
    b"done": "done",
    b"wait": "wait",
    b"fenced": "fenced",
}
