"""The respond group: one reply per turn, in turn order, superseded when the customer wrote
again meanwhile, never starved. The responder here is a stand-in that records its prompts."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

from redis.asyncio import Redis

from processors.responder import Answer, Prompt
from tests.processors.conversations import (
    REPLIES,
    add,
    count_replies,
    debouncing,
    message,
    pace,
    replies,
    windows,
)
from tests.waiting import eventually
from zapstream.events import ReplyGenerated, ReplySuperseded
from zapstream.topology import Topology


class StandIn:
    """Answers every prompt, after `delay` seconds or once `gate` opens."""

    def __init__(self, delay: float = 0.0, rng: random.Random | None = None) -> None:
        self.prompts: list[Prompt] = []
        self.delay = delay
        self.rng = rng
        self.gate: asyncio.Event | None = None

    async def answer(self, prompt: Prompt) -> Answer:
        self.prompts.append(prompt)
        if self.gate is not None:
            await self.gate.wait()
        delay = self.rng.uniform(0, self.delay) if self.rng else self.delay
        if delay:
            await asyncio.sleep(delay)  # the AI thinking: simulated work
        return Answer(body=f"re: {' / '.join(prompt.messages)}", tokens=7)


def texts(prompt: Prompt) -> list[str]:
    return prompt.messages


async def test_a_turn_gets_one_reply_covering_its_messages(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    responder = StandIn()
    async with debouncing(redis, windows(make_topology), responder=responder, responders=1):
        await add(redis, message(1))
        await add(redis, message(2))
        await eventually(lambda: count_replies(redis, 1), timeout=10)
    (reply,) = await replies(redis)
    assert isinstance(reply, ReplyGenerated)
    assert reply.reply_id == "sess-15550001111:1" and reply.turn_id == "1"
    assert reply.message_ids == ["wamid.15550001111.1", "wamid.15550001111.2"]
    assert reply.tokens == 7 and reply.customer == "15550001111"
    assert len(responder.prompts) == 1


async def test_a_message_while_answering_supersedes_and_one_reply_covers_both(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    responder = StandIn()
    responder.gate = asyncio.Event()
    async with debouncing(redis, windows(make_topology), responder=responder, responders=1):
        await add(redis, message(1))
        await eventually(lambda: len(responder.prompts) == 1, timeout=10)  # answering turn 1
        await add(redis, message(2))
        await eventually(lambda: redis.exists("zapstream:{p0}:burst:sess-15550001111"), timeout=5)
        await eventually(lambda: _turns_cut(redis, 2), timeout=10)
        responder.gate.set()
        await eventually(lambda: count_replies(redis, 2), timeout=10)
    superseded, generated = await replies(redis)
    assert isinstance(superseded, ReplySuperseded)
    assert (superseded.turn_id, superseded.tokens) == ("1", 7)
    assert isinstance(generated, ReplyGenerated) and generated.turn_id == "2"
    assert generated.message_ids == ["wamid.15550001111.1", "wamid.15550001111.2"]
    assert [texts(p) for p in responder.prompts] == [["hi 1"], ["hi 1", "hi 2"]]


async def _turns_cut(redis: Redis, count: int) -> bool:
    cut = await redis.hget("zapstream:{p0}:session:sess-15550001111", "turns")
    return int(cut or 0) >= count


async def test_policy_send_sends_the_overtaken_reply_too(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    responder = StandIn()
    responder.gate = asyncio.Event()
    topology = windows(make_topology, policy="send")
    async with debouncing(redis, topology, responder=responder, responders=1):
        await add(redis, message(1))
        await eventually(lambda: len(responder.prompts) == 1, timeout=10)
        await add(redis, message(2))
        await eventually(lambda: _turns_cut(redis, 2), timeout=10)
        responder.gate.set()
        await eventually(lambda: count_replies(redis, 2), timeout=10)
    assert [type(r).__name__ for r in await replies(redis)] == ["ReplyGenerated"] * 2


async def test_50_sessions_across_two_workers_settle_turns_in_order(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    responder = StandIn(delay=0.05, rng=random.Random(seed))
    base = await _ms_ago(redis, 60_000)
    for turn in range(3):  # three bursts per session, max wait apart
        for session in range(50):
            at = base + turn * 2000 + session * 10
            await add(redis, message(turn, customer=f"1555{session:07d}"), at_ms=at)
    async with debouncing(
        redis, windows(make_topology), workers=2, responder=responder, responders=2
    ):
        await eventually(lambda: count_replies(redis, 150), timeout=60, interval=0.1)
    settled: dict[str, list[str]] = {}
    for reply in await replies(redis):
        settled.setdefault(reply.session_id, []).append(reply.turn_id)  # type: ignore[attr-defined]
    assert len(settled) == 50
    assert all(order == ["1", "2", "3"] for order in settled.values()), settled


async def _ms_ago(redis: Redis, ms: int) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000 - ms


async def test_a_customer_who_keeps_writing_gets_an_answer_at_least_every_max_wait(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    responder = StandIn(delay=0.8)  # slower than the customer types: every reply is overtaken
    async with debouncing(redis, windows(make_topology), responder=responder, responders=1):
        for n in range(16):  # a message every 500 ms for 8 s
            await add(redis, message(n))
            await pace(0.5)
        await eventually(lambda: _all_answered(redis), timeout=15)
    outcomes = await replies(redis)
    assert any(isinstance(r, ReplySuperseded) for r in outcomes)
    sent = [
        await _entry_ms(redis, i) for i, r in enumerate(outcomes) if isinstance(r, ReplyGenerated)
    ]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # Max wait (1.5 s), plus the answer's own time (0.8 s), plus a wide margin.
    assert gaps and max(gaps) < 1500 + 800 + 1500, gaps
    answered = [m for r in outcomes if isinstance(r, ReplyGenerated) for m in r.message_ids]
    assert sorted(answered) == sorted(f"wamid.15550001111.{n}" for n in range(16))


async def _all_answered(redis: Redis) -> bool:
    answered = set()
    for reply in await replies(redis):
        if isinstance(reply, ReplyGenerated):
            answered.update(reply.message_ids)
    return len(answered) == 16


async def _entry_ms(redis: Redis, index: int) -> int:
    entries = await redis.xrange(REPLIES)
    return int(entries[index][0].split(b"-")[0])


async def test_a_reaction_while_answering_supersedes_nothing(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    responder = StandIn()
    responder.gate = asyncio.Event()
    async with debouncing(redis, windows(make_topology), responder=responder, responders=1):
        await add(redis, message(1))
        await eventually(lambda: len(responder.prompts) == 1, timeout=10)
        await add(redis, message(2, kind="reaction"))
        await eventually(lambda: _handled_messages(redis, 2), timeout=5)
        responder.gate.set()
        await eventually(lambda: count_replies(redis, 1), timeout=10)
    (reply,) = await replies(redis)
    assert isinstance(reply, ReplyGenerated) and reply.message_ids == ["wamid.15550001111.1"]


async def _handled_messages(redis: Redis, count: int) -> bool:
    groups = await redis.xinfo_groups("zapstream:{p0}:messages")
    return any(int(g["entries-read"] or 0) >= count and int(g["pending"]) == 0 for g in groups)


async def test_a_completed_answer_is_never_regenerated(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    responder = StandIn()
    stored = b'{"body":"answered before the crash","tokens":3,"handoff":false}'
    await redis.set("zapstream:{p0}:reply:sess-15550001111:1", stored)
    async with debouncing(redis, windows(make_topology), responder=responder, responders=1):
        await add(redis, message(1))
        await eventually(lambda: count_replies(redis, 1), timeout=10)
    (reply,) = await replies(redis)
    assert isinstance(reply, ReplyGenerated) and reply.body == "answered before the crash"
    assert responder.prompts == []
