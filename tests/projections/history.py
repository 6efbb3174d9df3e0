"""A seeded history for projection tests: a few thousand mixed events appended to the log as
the pipeline would write them (sessions, bursts, turns, replies and their outcomes, statuses
in every order, failures, supersedes, handoffs, a rejected message, an operator's requeue),
interleaved across streams the way live traffic interleaves them.

    summary = await write_history(redis, seed=7)  # 250 sessions, about 3,300 events
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import msgspec
from redis.asyncio import Redis

from zapstream.envelope import encode_fields
from zapstream.events import (
    DeadLetterRequeued,
    Event,
    HandoffReleased,
    HandoffRequested,
    MessageReceived,
    MessageRejected,
    ReplyBlocked,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    ReplySuperseded,
    StatusUpdated,
    TurnReady,
)

STREAMS = {
    MessageReceived: "messages",
    MessageRejected: "messages",
    StatusUpdated: "statuses",
    TurnReady: "turns",
    ReplyGenerated: "replies",
    ReplySent: "replies",
    ReplyFailed: "replies",
    ReplyBlocked: "replies",
    ReplySuperseded: "replies",
    HandoffRequested: "handoffs",
    HandoffReleased: "handoffs",
    DeadLetterRequeued: "operations",
}
NUMBERS = ("100000000000001", "100000000000002")
START_TS = 1_795_000_000  # WhatsApp timestamps start here (Nov 2026)
KINDS = ["text"] * 8 + ["image", "location", "audio", "reaction"]


class Summary(msgspec.Struct, kw_only=True):
    seed: int
    events: int
    sessions: int
    by_type: dict[str, int]


def key(stream: str) -> str:
    return f"zapstream:{{p0}}:{stream}"


async def write_history(
    redis: Redis, *, seed: int, sessions: int = 250, batch: int = 500
) -> Summary:
    """Append the seeded history; its summary. The same seed gives the same events in the
    same order (their entry ids differ: Redis assigns them)."""
    events = list(history(random.Random(seed), sessions))
    by_type: dict[str, int] = {}
    for start in range(0, len(events), batch):
        pipe = redis.pipeline(transaction=False)
        for event in events[start : start + batch]:
            fields = encode_fields(event)
            by_type[fields["type"]] = by_type.get(fields["type"], 0) + 1
            pipe.xadd(key(STREAMS[type(event)]), fields)  # type: ignore[arg-type]
        await pipe.execute()
    return Summary(seed=seed, events=len(events), sessions=sessions, by_type=by_type)


def history(rng: random.Random, sessions: int) -> Iterator[Event]:
    """The events of every session, merged in a shuffled time order (what live traffic
    does); each session's own events keep their causal order within each stream."""
    stories = [list(_session(rng, n)) for n in range(sessions)]
    # Merge: repeatedly take the next event of a random unfinished session.
    cursors = [0] * len(stories)
    live = [n for n, story in enumerate(stories) if story]
    while live:
        n = rng.choice(live)
        yield stories[n][cursors[n]]
        cursors[n] += 1
        if cursors[n] == len(stories[n]):
            live.remove(n)


def _session(rng: random.Random, n: int) -> Iterator[Event]:
    number = NUMBERS[n % len(NUMBERS)]
    # Every fifth customer comes back: the earlier session is then closed.
    customer = f"5511{(n - n % 5 if n % 5 == 1 else n):08d}"
    ts = START_TS + n * 7200 + (86400 * 2 if n % 5 == 1 else 0)
    session = f"c{n:04d}-{ts}"
    if rng.random() < 0.03:
        yield MessageRejected(
            session_id=session,
            message_id=f"wamid.REJ.{n}",
            raw='{"type": "text", "text": 7}',
            reason="text: Expected `object`, got `int`",
            phone_number_id=number,
            customer=customer,
            timestamp=ts,
        )
    held = False
    message_no = 0
    for turn in range(1, rng.randint(1, 3) + 1):
        turn_id = str(turn)
        wamids = []
        for _ in range(rng.randint(1, 4)):
            message_no += 1
            ts += rng.randint(1, 40)
            kind = rng.choice(KINDS)
            wamid = f"wamid.IN.{n}.{message_no}"
            yield _message(session, wamid, kind, customer, number, ts, message_no)
            if kind != "reaction":
                wamids.append(wamid)
        if not wamids:
            continue
        yield TurnReady(
            session_id=session,
            turn_id=turn_id,
            message_ids=wamids,
            phone_number_id=number,
            customer=customer,
        )
        reply_id = f"{session}:{turn_id}"
        if held:
            yield ReplyBlocked(
                session_id=session, turn_id=turn_id, reply_id=reply_id, reason="handoff"
            )
            continue
        fate = rng.random()
        tokens = rng.randint(20, 400)
        if fate < 0.12:
            yield ReplySuperseded(
                session_id=session, turn_id=turn_id, reply_id=reply_id, tokens=tokens
            )
            continue
        body = f"answer {turn_id} to session {n}" + " more" * rng.randint(0, 5)
        yield ReplyGenerated(
            session_id=session,
            turn_id=turn_id,
            reply_id=reply_id,
            body=body,
            tokens=tokens,
            message_ids=wamids,
            phone_number_id=number,
            customer=customer,
            newest_timestamp=ts,
        )
        if fate < 0.17:
            yield ReplyBlocked(
                session_id=session, turn_id=turn_id, reply_id=reply_id, reason="window_closed"
            )
            continue
        if fate < 0.25:
            code = rng.choice([131026, 130403, 131049])
            yield ReplyFailed(
                session_id=session, turn_id=turn_id, reply_id=reply_id, code=code, reason="refused"
            )
            continue
        parts = 2 if rng.random() < 0.1 else 1
        out = [f"wamid.OUT.{n}.{turn_id}.{p}" for p in range(parts)]
        statuses = list(_statuses(rng, session, out, number, customer, ts))
        # Some statuses reach the log before the reply.sent that names their wamid.
        early = [s for s in statuses if rng.random() < 0.3]
        yield from early
        yield ReplySent(
            session_id=session,
            turn_id=turn_id,
            reply_id=reply_id,
            message_id=out[0],
            wamids=out,
            resent=0,
        )
        yield from (s for s in statuses if s not in early)
        if not held and rng.random() < 0.1:
            held = True
            yield HandoffRequested(
                session_id=session, turn_id=turn_id, phone_number_id=number, customer=customer
            )
            if rng.random() < 0.5:
                held = False
                yield HandoffReleased(
                    session_id=session, turn_id=turn_id, phone_number_id=number, customer=customer
                )
    if n % 50 == 7:  # an operator sent one of its entries back (read models ignore it)
        yield DeadLetterRequeued(
            session_id=session,
            group="respond",
            dead_letter_id=f"{ts * 1000}-{n}",
            stream="turns",
            entry_id=f"{ts * 1000 - 1}-0",
            error="TimeoutError: handler ran past 120s",
            code="timeout",
        )


def _message(
    session: str, wamid: str, kind: str, customer: str, number: str, ts: int, no: int
) -> MessageReceived:
    data: dict[str, object] = {"from": customer, "id": wamid, "timestamp": str(ts), "type": kind}
    if kind == "text":
        data["text"] = {"body": f"message {no} from {customer}"}
    elif kind == "image":
        data["image"] = {"id": f"media.{no}", "mime_type": "image/jpeg", "caption": f"photo {no}"}
    elif kind == "location":
        data["location"] = {"latitude": -23.5, "longitude": -46.6, "name": "Loja"}
    elif kind == "audio":
        data["audio"] = {"id": f"media.{no}", "mime_type": "audio/ogg", "voice": True}
    else:
        data["reaction"] = {"message_id": "wamid.OUT.x", "emoji": "\U0001f44d"}
    return MessageReceived(
        session_id=session,
        message_id=wamid,
        kind=kind,
        from_=customer,
        customer=customer,
        phone_number_id=number,
        timestamp=ts,
        name=f"Customer {customer[-4:]}",
        data=json.dumps(data, separators=(",", ":")),
    )


def _statuses(
    rng: random.Random, session: str, wamids: list[str], number: str, customer: str, ts: int
) -> Iterator[StatusUpdated]:
    """sent, delivered, read (delivered sometimes skipped), or a failure; shuffled."""
    for wamid in wamids:
        if rng.random() < 0.05:
            names = ["sent", "failed"]
        else:
            names = ["sent", "delivered", "read"][: rng.randint(1, 3)]
            if len(names) == 3 and rng.random() < 0.2:
                names.remove("delivered")
        items = []
        for offset, name in enumerate(names):
            data: dict[str, object] = {
                "id": wamid,
                "status": name,
                "timestamp": str(ts + 1 + offset),
                "recipient_id": customer,
            }
            if name == "failed":
                data["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
            items.append(
                StatusUpdated(
                    session_id=session,
                    message_id=wamid,
                    status=name,
                    timestamp=ts + 1 + offset,
                    phone_number_id=number,
                    customer=customer,
                    data=json.dumps(data, separators=(",", ":")),
                )
            )
        rng.shuffle(items)
        yield from items
