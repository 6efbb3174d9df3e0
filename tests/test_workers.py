"""Worker processes sharing Redis: two senders hold one rate limit between them, and a
responder killed in the middle of an LLM call asks again (its answer was never completed)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from tests.notifications import BUSINESS
from tests.processes import Worker
from tests.processors.conversations import add, message
from tests.servers import Webhook
from tests.waiting import eventually
from zapstream.envelope import decode_fields
from zapstream.events import ReplyGenerated
from zapstream.standin import GraphStandIn, lifespan
from zapstream.topology import Topology

REPLIES = "zapstream:{p0}:replies"
RATE, BURST, REPLIES_SENT = 10, 3, 50


def write_config(topology: Topology, path: Path) -> Path:
    path.write_bytes(msgspec.json.encode(msgspec.to_builtins(topology, enc_hook=float)))
    return path


async def test_two_sender_processes_share_the_number_rate_limit(
    redis: Redis, redis_url: str, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = make_topology(
        rate_limits={
            "per_number": {"rate": RATE, "per": "1s", "burst": BURST},
            "per_customer": {"rate": 100, "per": "1s", "burst": 10},
        },
        # Small read-ahead, so that both processes take part.
        groups={"send": {"streams": ["replies"], "concurrency": 4, "batch": 4, "idle": "2s"}},
    )
    config = write_config(topology, tmp_path / "streams.yaml")
    graph = GraphStandIn()
    server = Webhook(graph)
    await server.start()
    senders = [
        Worker(redis_url, config, server.url + "/v25.0", tmp_path, groups=("send",), name=name)
        for name in ("a", "b")
    ]
    try:
        for sender in senders:
            sender.start()
        # Warm-up: each process sends once (its first POST opens a connection, which would
        # blur the arrival times), then the bucket is left to fill up (its key expires).
        warm = 0
        while not all(sender.log_lines("reply_sent") for sender in senders):
            await add(redis, _reply(f"w{warm}"), stream=REPLIES)
            warm += 1
            await eventually(lambda: len(graph.texts) >= warm, timeout=10)  # noqa: B023
            assert warm < 50, "one process never took a reply"
        await eventually(lambda: _bucket_full(redis), timeout=10)
        measured_from = len(graph.texts)
        for n in range(REPLIES_SENT):  # replies to 50 customers of one business number
            await add(redis, _reply(str(n)), stream=REPLIES)
        total = measured_from + REPLIES_SENT
        await eventually(lambda: len(graph.texts) >= total, timeout=30, interval=0.1)
        counts = [sender.log_lines("reply_sent") for sender in senders]
    finally:
        for sender in senders:
            sender.stop()
        await graph.close()
        await server.stop()
    measured = graph.texts[measured_from:]
    arrivals = sorted(r.at for r in measured)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    print(f"busiest one-second window: {busiest} sends (limit {RATE} + burst {BURST})")
    print(f"replies sent per process: {counts}")
    assert busiest <= RATE + BURST
    assert len({r.callback for r in graph.texts}) == total  # each once
    assert all(count > 1 for count in counts)  # both took part beyond the warm-up


async def _bucket_full(redis: Redis) -> bool:
    return not await redis.exists(f"zapstream:rate:{BUSINESS}")


def _reply(name: str) -> ReplyGenerated:
    return ReplyGenerated(
        session_id=f"s-{name}",
        turn_id="1",
        reply_id=f"s-{name}:1",
        body=f"answer {name}",
        message_ids=[f"wamid.{name}"],
        phone_number_id=BUSINESS,
        customer=f"1555{abs(hash(name)) % 10**7:07d}",
        newest_timestamp=int(time.time()),
    )


class LLM:
    """An OpenAI-compatible stand-in: the first request never gets an answer (until the
    test ends), the others a completion."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b""
        while True:
            part = await receive()
            body += part.get("body", b"")
            if not part.get("more_body"):
                break
        self.requests.append(json.loads(body))
        if len(self.requests) == 1:
            await self.release.wait()
            return
        answer = {
            "choices": [{"message": {"role": "assistant", "content": "asked again, answered"}}],
            "usage": {"total_tokens": 12},
        }
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


async def test_a_responder_killed_mid_call_asks_the_llm_again(
    redis: Redis, redis_url: str, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = make_topology(
        debounce={"quiet": "100ms", "max_wait": "1s"},
        groups={"respond": {"streams": ["turns"], "idle": "1s", "concurrency": 4}},
    )
    config = write_config(topology, tmp_path / "streams.yaml")
    llm = LLM()
    server = Webhook(llm)
    await server.start()
    env = {"RESPONDER": "openai", "OPENAI_BASE_URL": server.url + "/v1", "OPENAI_MODEL": "m"}
    worker = Worker(
        redis_url,
        config,
        "http://127.0.0.1:9/v25.0",  # nothing listens: the typing indicator fails, harmlessly
        tmp_path,
        groups=("debounce", "respond"),
        env=env,
    )
    await add(redis, message(1))
    try:
        worker.start()
        await eventually(lambda: llm.requests, timeout=15)  # the call is in flight
        worker.kill_and_restart()
        replies = await eventually(lambda: _generated(redis), timeout=30, interval=0.1)
    finally:
        worker.stop()
        llm.release.set()
        await server.stop()
    (reply,) = replies
    assert reply.body == "asked again, answered" and reply.tokens == 12
    assert len(llm.requests) == 2  # the killed call was never completed: asked once more


async def _generated(redis: Redis) -> list[ReplyGenerated]:
    found = [decode_fields(f) for _, f in await redis.xrange(REPLIES)]
    return [e for e in found if isinstance(e, ReplyGenerated)]
