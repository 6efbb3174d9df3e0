"""Replies reach the customer through the Graph API stand-in, each once: error codes, the
pair limit, the pause, the 24-hour window, long answers, replies in doubt, and handoff."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from redis.asyncio import Redis

from processors.handoff import SIGNATURE_HEADER, held_sessions, release
from processors.responder import Answer, Prompt
from tests.notifications import BUSINESS
from tests.processors.conversations import add
from tests.processors.replying import HANDOFF_SECRET, HANDOFFS, REPLIES, decode, replying, short
from tests.waiting import eventually
from zapstream.events import (
    HandoffReleased,
    HandoffRequested,
    ReplyBlocked,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    StatusUpdated,
)
from zapstream.scrape import read_figures
from zapstream.settings import Settings
from zapstream.signing import sign
from zapstream.standin import Answer as Scripted
from zapstream.standin import GraphStandIn, Received, error, notification, wire
from zapstream.topology import Topology

ALICE, BOB = "15550001111", "15550002222"
DEAD = "zapstream:{p0}:dead:send"
STATUSES = "zapstream:{p0}:statuses"


async def test_a_text_gets_one_reply_with_the_right_recipient_token_and_body(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    async with replying(redis, make_settings, short(make_topology)) as pipe:
        wamid = await pipe.write(ALICE, "Are you open on Sunday?")
        (sent,) = await eventually(lambda: pipe.of_type(ReplySent), timeout=10)
        # Its `sent` status came back through the webhook with the reply's session.
        statuses = await eventually(lambda: pipe.of_type(StatusUpdated, STATUSES), timeout=10)
    (text,) = pipe.graph.texts
    assert text.to == "+" + ALICE and text.phone_number_id == BUSINESS
    assert text.headers["authorization"] == "Bearer test-access-token"
    assert "Sundays" in text.text
    assert "context" not in text.body  # answers the customer's latest message: no quote
    assert text.callback == f"{sent.reply_id}#0" and sent.message_id == text.wamid
    # Read and typing, once, before the reply.
    (typing,) = [r for r in pipe.graph.received if r.body.get("status") == "read"]
    assert typing.body["message_id"] == wamid and typing.body["typing_indicator"]["type"] == "text"
    assert pipe.graph.received.index(typing) < pipe.graph.received.index(text)
    assert statuses[0].message_id == text.wamid and statuses[0].session_id == sent.session_id


async def test_media_location_and_unsupported_get_sensible_answers_and_a_reaction_none(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    kinds = {
        "15550003001": ("image", {"image": {"id": "m1", "mime_type": "image/jpeg"}}),
        "15550003002": ("location", {"location": {"latitude": -23.5, "longitude": -46.6}}),
        "15550003003": ("unsupported", {"unsupported": {"type": "poll_creation"}}),
        "15550003004": ("reaction", {"reaction": {"message_id": "wamid.x", "emoji": "\U0001f44d"}}),
    }
    async with replying(redis, make_settings, short(make_topology)) as pipe:
        for n, (customer, (kind, body)) in enumerate(kinds.items()):
            message = {
                "from": customer,
                "id": f"wamid.K{n}",
                "timestamp": str(int(time.time())),
                "type": kind,
                **body,
            }
            contacts = [{"profile": {"name": "C"}, "wa_id": customer}]
            await pipe.post(notification({"contacts": contacts, "messages": [message]}, BUSINESS))
        await eventually(lambda: _count(pipe.of_type(ReplySent), 3), timeout=10)
        # The reaction's message is in the log, and no turn ever comes of it.
        assert await redis.xlen("zapstream:{p0}:turns") == 3
    by_customer = {r.to.lstrip("+"): r.text for r in pipe.graph.texts}
    assert set(by_customer) == set(list(kinds)[:3])
    assert "file" in by_customer["15550003001"]
    assert "location" in by_customer["15550003002"]
    assert "can't read" in by_customer["15550003003"]


def texts_answered(*answers: Scripted) -> Callable[[Received], Scripted | None]:
    """A stand-in script: the first text messages get these answers, in order; every other
    request (typing, later texts) the default."""
    queue = list(answers)

    def script(request: Received) -> Scripted | None:
        return queue.pop(0) if request.is_text and queue else None

    return script


async def _count(events: object, n: int) -> bool:
    return len(await events) >= n  # type: ignore[misc, arg-type]


async def test_429_then_500_then_200_delivers_once(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    graph = GraphStandIn(
        script=texts_answered(
            error(130429, "rate", status=429, **{"Retry-After": "1"}), Scripted(status=500)
        )
    )
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        (sent,) = await eventually(lambda: pipe.of_type(ReplySent), timeout=15)
    texts = [r for r in graph.received if r.is_text]
    assert len(texts) == 3 and len(graph.texts) == 1  # two refusals, one delivery
    assert texts[1].at - texts[0].at >= 1.0  # Retry-After was honoured
    assert sent.message_id == graph.texts[0].wamid


async def test_131026_is_one_attempt_and_a_failed_reply_never_dead_lettered(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    graph = GraphStandIn(script=lambda r: error(131026, "undeliverable") if r.is_text else None)
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        (failed,) = await eventually(lambda: pipe.of_type(ReplyFailed), timeout=10)
        assert await _quiet_send_group(redis)
    assert failed.code == 131026
    assert len([r for r in graph.received if r.is_text]) == 1
    assert not await redis.exists(DEAD)


async def _quiet_send_group(redis: Redis) -> bool:
    async def idle() -> bool:
        return int((await redis.xpending("zapstream:{p0}:replies", "send"))["pending"]) == 0

    return bool(await eventually(idle, timeout=10))


async def test_an_unknown_code_is_dead_lettered(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    graph = GraphStandIn(script=lambda r: error(999999, "new") if r.is_text else None)
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        (dead,) = await eventually(lambda: redis.xrange(DEAD), timeout=10)
        assert await _quiet_send_group(redis)
        assert not await pipe.of_type(ReplySent) and not await pipe.of_type(ReplyFailed)
    assert b"999999" in dead[1][b"dlq_error"]


async def test_the_pair_limit_makes_that_customer_wait_and_no_other(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    refused: list[str] = []

    def script(request: object) -> Scripted | None:
        to = getattr(request, "to", "")
        if getattr(request, "is_text", False) and to == "+" + ALICE and not refused:
            refused.append(to)
            return error(131056, "pair rate limit")
        return None

    graph = GraphStandIn(script=script)
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        await eventually(lambda: refused, timeout=10)
        await pipe.write(BOB, "hello")
        sent = await eventually(lambda: _count(pipe.of_type(ReplySent), 2), timeout=15)
        assert sent
    order = [r.to for r in graph.texts]
    assert order == ["+" + BOB, "+" + ALICE]  # Bob went while Alice waited out 4^0 s
    alice = [r for r in graph.received if r.is_text and r.to == "+" + ALICE]
    assert alice[1].at - alice[0].at >= 1.0


async def test_an_auth_error_pauses_the_sender_and_says_why(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    graph = GraphStandIn(script=texts_answered(error(190, "access token expired", status=401)))
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        reason = await eventually(lambda: redis.get("zapstream:paused"), timeout=10)
        assert b"190" in reason and b"expired" in reason
        paused_at = time.time()
        await pipe.write(BOB, "hello")  # waits the pause out too
        await eventually(lambda: _count(pipe.of_type(ReplySent), 2), timeout=15)
    first = [r for r in graph.received if r.is_text]
    assert len(first) == 3 and len(graph.texts) == 2
    assert all(r.at >= paused_at + 0.5 for r in graph.texts)  # nothing went during the pause
    assert pipe.metrics.sender_paused._value.get() == 1


async def test_a_message_older_than_24_hours_is_blocked_without_a_post(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    old = int(time.time()) - 25 * 3600
    message = {"from": ALICE, "id": "wamid.OLD", "timestamp": str(old), "type": "text"}
    message["text"] = {"body": "hello"}  # type: ignore[assignment]
    contacts = [{"profile": {"name": "A"}, "wa_id": ALICE}]
    async with replying(redis, make_settings, short(make_topology)) as pipe:
        await pipe.post(wire(_envelope(contacts, message)))
        (blocked,) = await eventually(lambda: pipe.of_type(ReplyBlocked), timeout=10)
    assert blocked.reason == "window_closed"
    assert pipe.graph.received == []  # no reply, no typing indicator
    assert not await pipe.of_type(ReplyGenerated)


def _envelope(contacts: list[dict[str, object]], message: dict[str, object]) -> object:
    return msgspec.json.decode(
        notification({"contacts": contacts, "messages": [message]}, BUSINESS)
    )


class Long:
    """A responder with a long answer: numbered sentences, about 9,000 characters."""

    async def answer(self, prompt: Prompt) -> Answer:
        body = " ".join(f"Sentence {n:04d} of the long answer." for n in range(280))
        return Answer(body=body, tokens=1)


async def test_a_long_answer_arrives_as_ordered_parts_each_once(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    async with replying(redis, make_settings, short(make_topology), responder=Long()) as pipe:
        await pipe.write(ALICE, "tell me everything")
        (sent,) = await eventually(lambda: pipe.of_type(ReplySent), timeout=10)
    texts = pipe.graph.texts
    assert len(texts) == 3 and all(len(t.text) <= 4000 for t in texts)
    assert [t.callback for t in texts] == [f"{sent.reply_id}#{n}" for n in range(3)]
    joined = " ".join(t.text for t in texts)
    assert joined == (await Long().answer(None)).body  # type: ignore[arg-type]
    assert sent.wamids == [t.wamid for t in texts]


async def test_a_reply_in_doubt_is_settled_by_its_sent_status_not_resent(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    # Meta takes the message, posts its `sent` status, and never answers the POST.
    graph = GraphStandIn(script=texts_answered(Scripted(drop=True)))
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        (sent,) = await eventually(lambda: pipe.of_type(ReplySent), timeout=15)
    (text,) = [r for r in graph.received if r.is_text]
    assert sent.message_id == text.wamid and sent.resent == 0
    assert pipe.metrics.parts_settled_by_status._value.get() == 1


async def test_a_reply_in_doubt_with_no_status_is_resent_once_after_the_doubt_time(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    graph = GraphStandIn(statuses=(), script=texts_answered(Scripted(drop=True)))
    async with replying(redis, make_settings, short(make_topology), graph=graph) as pipe:
        await pipe.write(ALICE, "hello")
        in_doubt = await eventually(lambda: redis.zrange("zapstream:{p0}:doubt", 0, -1), timeout=10)
        assert len(in_doubt) == 1
        # Counted and exported while in doubt (/metrics reads the doubt sets at each scrape).
        assert (await read_figures(redis, short(make_topology))).in_doubt == 1
        (sent,) = await eventually(lambda: pipe.of_type(ReplySent), timeout=15)
        assert await redis.zcard("zapstream:{p0}:doubt") == 0
    first, second = [r for r in graph.received if r.is_text]
    assert second.at - first.at >= 2.0  # send.doubt
    assert sent.resent == 1 and sent.message_id == second.wamid
    assert pipe.metrics.parts_resent._value.get() == 1


async def test_handoff_signed_webhook_silence_release_and_answers_resume(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    async with replying(redis, make_settings, short(make_topology)) as pipe:
        await pipe.write(ALICE, "quero falar com um atendente")
        (requested,) = await eventually(
            lambda: pipe.of_type(HandoffRequested, HANDOFFS), timeout=10
        )
        await eventually(lambda: pipe.receiver.received, timeout=10)
        await eventually(lambda: _count(pipe.of_type(ReplySent), 1), timeout=10)
        (held,) = await held_sessions(redis, short(make_topology))
        assert held.session_id == requested.session_id and held.customer == ALICE

        await pipe.write(ALICE, "oi? tem alguém aí?")  # held: logged, turned, never answered
        (blocked,) = await eventually(lambda: pipe.of_type(ReplyBlocked), timeout=10)
        assert blocked.reason == "handoff"

        assert await release(redis, short(make_topology), requested.session_id)
        assert await release(redis, short(make_topology), requested.session_id) is None
        await eventually(lambda: len(pipe.receiver.received) == 2, timeout=10)
        await pipe.write(ALICE, "qual o horário de domingo?")
        await eventually(lambda: _count(pipe.of_type(ReplySent), 2), timeout=10)
    (released,) = await pipe.of_type(HandoffReleased, HANDOFFS)
    assert released.turn_id == "2"
    texts = [t.text for t in pipe.graph.texts]
    assert len(texts) == 2 and "equipe" in texts[0] and "domingo" in texts[1]
    for (headers, body), kind in zip(
        pipe.receiver.received, ["handoff.requested", "handoff.released"], strict=True
    ):
        assert headers[SIGNATURE_HEADER.lower()] == sign(body, HANDOFF_SECRET)
        assert decode(body)["type"] == kind and headers["idempotency-key"]


async def test_a_reply_quotes_what_it_answers_only_when_the_customer_wrote_since(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    now = int(time.time())

    def reply(turn: str) -> ReplyGenerated:
        return ReplyGenerated(
            session_id="s-quote",
            turn_id=turn,
            reply_id=f"s-quote:{turn}",
            body=f"answer {turn}",
            message_ids=[f"wamid.Q{turn}a", f"wamid.Q{turn}b"],
            phone_number_id=BUSINESS,
            customer=ALICE,
            newest_timestamp=now,
        )

    # Turn 2 is the session's latest; turn 1 was overtaken by it (cut before turn 1 was sent).
    await redis.hset("zapstream:{p0}:session:s-quote", "turns", 2)
    async with replying(redis, make_settings, short(make_topology), groups=("send",)) as pipe:
        await add(redis, reply("1"), stream=REPLIES)
        await add(redis, reply("2"), stream=REPLIES)
        await eventually(lambda: _count(pipe.of_type(ReplySent), 2), timeout=10)
    first, second = sorted(pipe.graph.texts, key=lambda r: r.text)
    assert first.body["context"] == {"message_id": "wamid.Q1b"}  # the newest it answers
    assert "context" not in second.body  # answers the latest: no quote
