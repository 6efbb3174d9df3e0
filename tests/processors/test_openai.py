"""The `openai` responder against a real OpenAI-compatible stand-in on 127.0.0.1: the request
it sends, the bounded context, retries, refusals, timeouts, handoff, and the respond group
dead-lettering a turn whose LLM never answers while other sessions get their replies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from processors.groups import pick_responder
from processors.openai_responder import SYSTEM_PROMPT, CompletionError, OpenAIResponder
from processors.responder import Prompt
from tests.llm import HANG, MODEL, ChatStandIn, Recorded, Reply, completion
from tests.processors.conversations import REPLIES, add, debouncing, message, windows
from tests.waiting import eventually
from zapstream.envelope import decode_fields
from zapstream.events import MessageReceived, ReplyGenerated, TurnReady
from zapstream.settings import ConfigError, load_settings
from zapstream.topology import Backoff, Duration, Topology

KEY = "sk-test-0123456789"
DEAD = "zapstream:{p0}:dead:respond"


@pytest.fixture
async def start_llm() -> AsyncIterator[Callable[..., Awaitable[ChatStandIn]]]:
    """Start a chat completions stand-in; released and stopped after the test."""
    started: list[ChatStandIn] = []

    async def start(script: list[Reply] | Callable[[Recorded], Reply]) -> ChatStandIn:
        llm = ChatStandIn(script)
        await llm.server.start()
        started.append(llm)
        return llm

    yield start
    for llm in started:
        llm.released.set()
        await llm.server.stop()


@pytest.fixture
async def make_responder() -> AsyncIterator[Callable[..., OpenAIResponder]]:
    """An OpenAIResponder on a stand-in (key, model, a 10 ms retry delay); closed afterwards."""
    made: list[OpenAIResponder] = []

    def make(llm: ChatStandIn, **options: Any) -> OpenAIResponder:
        options = {"model": MODEL, "api_key": KEY, "retry_delay": 0.01, **options}
        responder = OpenAIResponder(base_url=f"{llm.server.url}/v1/", **options)
        made.append(responder)
        return responder

    yield make
    for responder in made:
        await responder.aclose()


def prompt(*messages: str, context: list[str] | None = None) -> Prompt:
    return Prompt(
        session_id="sess-1",
        turn_id="3",
        messages=list(messages),
        kinds=["text"] * len(messages),
        context=context or [],
    )


async def test_a_prompt_becomes_system_earlier_turns_and_the_customer_messages(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm([completion("  Yes, on Sundays too, 10am to 2pm.\n", tokens=42)])
    responder = make_responder(llm)
    earlier = [
        "customer: hi",
        "customer: do you deliver?",
        "assistant: We deliver across the city.",
    ]
    with capture_logs() as logs:
        answer = await responder.answer(
            prompt("and on sunday?", "to Rua das Flores", context=earlier)
        )
    assert (answer.body, answer.tokens, answer.handoff) == (
        "Yes, on Sundays too, 10am to 2pm.",
        42,
        False,
    )
    (request,) = llm.requests
    assert request.json["model"] == MODEL
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.messages == [
        ("system", SYSTEM_PROMPT),
        ("user", "hi"),
        ("user", "do you deliver?"),
        ("assistant", "We deliver across the city."),
        ("user", "and on sunday?\nto Rua das Flores"),
    ]
    (line,) = [e for e in logs if e["event"] == "llm_answered"]
    assert line["tokens"] == 42 and line["attempts"] == 1 and line["seconds"] >= 0
    assert KEY not in repr(logs)


async def test_without_a_key_no_authorization_and_without_usage_zero_tokens(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm([completion("Olá!")])
    answer = await make_responder(llm, api_key="").answer(prompt("oi"))
    assert (answer.body, answer.tokens) == ("Olá!", 0)
    assert "authorization" not in llm.requests[0].headers


async def test_the_context_sent_is_the_latest_items_within_both_bounds(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm([completion("ok")])
    earlier = [f"customer: question {n}" if n % 2 else f"assistant: answer {n}" for n in range(10)]
    await make_responder(llm, max_context=4).answer(prompt("next", context=earlier))
    sent = llm.requests[0].messages
    assert sent[1:-1] == [
        ("assistant", "answer 6"),
        ("user", "question 7"),
        ("assistant", "answer 8"),
        ("user", "question 9"),
    ]
    # "question 9" and "answer 8" are 18 characters; "question 7" would make 28.
    await make_responder(llm, max_context_chars=25).answer(prompt("next", context=earlier))
    sent = llm.requests[1].messages
    assert sent == [
        ("system", SYSTEM_PROMPT),
        ("assistant", "answer 8"),
        ("user", "question 9"),
        ("user", "next"),
    ]


async def test_429_then_500_are_retried_honouring_retry_after(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm(
        [
            Reply(status=429, json={"error": "slow down"}, headers={"Retry-After": "0"}),
            Reply(status=500, json={"error": "oops"}),
            completion("third time lucky", tokens=5),
        ]
    )
    with capture_logs() as logs:
        answer = await make_responder(llm).answer(prompt("hello"))
    assert (answer.body, answer.tokens) == ("third time lucky", 5)
    assert len(llm.requests) == 3
    retries = [e for e in logs if e["event"] == "llm_retrying"]
    assert [e["retry_in"] for e in retries] == [0.0, 0.02]  # Retry-After, then 10 ms * 2
    assert [e["attempts"] for e in logs if e["event"] == "llm_answered"] == [3]


async def test_retries_stop_after_the_last_attempt(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm([Reply(status=503, json={"error": "overloaded"})])
    with pytest.raises(CompletionError, match=r"no answer in 3 attempts .*HTTP 503.*overloaded"):
        await make_responder(llm).answer(prompt("hello"))
    assert len(llm.requests) == 3


async def test_a_400_raises_at_once_with_status_and_body_but_never_the_key(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    refusal = {"error": {"message": f"model 'nope' not found (key {KEY})"}}
    llm = await start_llm([Reply(status=400, json=refusal)])
    with pytest.raises(CompletionError, match=r"HTTP 400: .*model 'nope' not found") as raised:
        await make_responder(llm).answer(prompt("hello"))
    assert KEY not in str(raised.value)
    assert len(llm.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [completion(""), completion(None), completion("  [HANDOFF] "), Reply(json={"choices": []})],
)
async def test_an_empty_answer_raises(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
    reply: Reply,
) -> None:
    llm = await start_llm([reply])
    with pytest.raises(CompletionError, match="no content"):
        await make_responder(llm).answer(prompt("hello"))
    assert len(llm.requests) == 1


async def test_a_hanging_llm_times_out_on_each_attempt_then_raises(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm([HANG])
    responder = make_responder(llm, timeout=0.2, attempts=2)
    with pytest.raises(CompletionError, match=r"no answer in 2 attempts .*within 0.2s"):
        await responder.answer(prompt("hello"))
    await eventually(lambda: len(llm.requests) >= 2)
    assert len(llm.requests) == 2


async def test_the_handoff_marker_or_the_customers_words_hand_over(
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    llm = await start_llm(
        [
            completion("Of course, a colleague will write to you shortly. [HANDOFF]", tokens=9),
            completion("Claro! Já chamo alguém da equipe."),
        ]
    )
    responder = make_responder(llm)
    marked = await responder.answer(prompt("can a person call me back?"))
    assert marked.handoff and marked.tokens == 9
    assert marked.body == "Of course, a colleague will write to you shortly."
    asked = await responder.answer(prompt("oi", "quero falar com um atendente"))
    assert asked.handoff and asked.body == "Claro! Já chamo alguém da equipe."


async def test_pick_responder_builds_it_from_the_settings_or_names_what_is_missing() -> None:
    environ = {"RESPONDER": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1/"}
    with pytest.raises(ConfigError, match="OPENAI_MODEL"):
        pick_responder(load_settings(environ, dotenv=None))
    responder = pick_responder(load_settings({**environ, "OPENAI_MODEL": MODEL}, dotenv=None))
    assert isinstance(responder, OpenAIResponder)
    assert responder.url == "http://127.0.0.1:11434/v1/chat/completions"
    assert responder.model == MODEL
    await responder.aclose()


def said(n: int, customer: str, text: str) -> MessageReceived:
    """Message `n` of a customer saying `text`, sent now (within the 24 h reply window)."""
    event = message(n, customer=customer, ts=int(time.time()))
    data = msgspec.json.decode(event.data)
    data["text"]["body"] = text
    return msgspec.structs.replace(event, data=msgspec.json.encode(data).decode())


async def test_a_turn_whose_llm_hangs_is_dead_lettered_while_other_sessions_are_answered(
    redis: Redis,
    make_topology: Callable[..., Topology],
    start_llm: Callable[..., Awaitable[ChatStandIn]],
    make_responder: Callable[..., OpenAIResponder],
) -> None:
    def script(request: Recorded) -> Reply:
        _, last = request.messages[-1]
        return HANG if "hang" in last else completion(f"re: {last}", tokens=4)

    llm = await start_llm(script)
    responder = make_responder(llm, timeout=0.2, attempts=2)
    base = windows(make_topology)
    respond = msgspec.structs.replace(
        base.groups["respond"],
        timeout=Duration(5.0),
        max_failures=2,
        backoff=Backoff(base=Duration(0.01), max=Duration(0.02)),
    )
    topology = msgspec.structs.replace(base, groups={**base.groups, "respond": respond})
    async with debouncing(redis, topology, responder=responder, responders=1):
        await add(redis, said(1, "15550001111", "please hang"))
        await add(redis, said(1, "15550002222", "do you deliver?"))
        await eventually(lambda: redis.exists(DEAD), timeout=15)
        await eventually(lambda: redis.exists(REPLIES), timeout=15)
    (reply,) = [decode_fields(fields) for _, fields in await redis.xrange(REPLIES)]
    assert isinstance(reply, ReplyGenerated)
    assert (reply.customer, reply.body, reply.tokens) == ("15550002222", "re: do you deliver?", 4)
    ((_, fields),) = await redis.xrange(DEAD)
    turn = decode_fields(fields)
    assert isinstance(turn, TurnReady) and turn.customer == "15550001111"
    assert fields[b"dlq_failures"] == b"2"
    assert fields[b"dlq_error"].startswith(b"CompletionError: ")
    assert b"no answer in 2 attempts" in fields[b"dlq_error"]
    hung = [r for r in llm.requests if "hang" in r.messages[-1][1]]
    assert len(hung) == 4  # two failures of two attempts each
