"""/metrics of real `serve`, `work` and `project` processes, scraped before and after a known
workload: the counters move by exactly what the workload did, and the figures read from Redis
at scrape time equal what Redis says at that moment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from processors.responder import Answer, Prompt
from processors.send import code_label
from tests.notifications import BUSINESS, SECRET, VERIFY_TOKEN, signed_headers
from tests.processors.replying import replying, short
from tests.servers import OwnRedis, Webhook, free_port
from tests.waiting import eventually
from tests.zapstream.scraping import (
    Command,
    Samples,
    parse,
    scrape,
    scrape_text,
    short_config,
    value,
)
from zapstream.envelope import encode_fields
from zapstream.events import MessageReceived
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.standin import Answer as Scripted
from zapstream.standin import GraphStandIn, Received, error, notification, text_notification
from zapstream.topology import Topology, load_topology

ALICE, BOB, CAROL, DAVE = "15550001111", "15550002222", "15550003333", "15550004444"
ACCESS_TOKEN = "metrics-access-token"
MESSAGES = "zapstream:{p0}:messages"
STREAM_KEYS = [f"zapstream:{{p0}}:{s}" for s in ("messages", "statuses", "turns", "replies")]
GROUPS = ("debounce", "respond", "send", "settle", "handoff")


class Pipeline:
    """`serve` and `work` on the test's Redis, replying through a Graph API stand-in."""

    def __init__(self, serve_url: str, work_url: str, graph: GraphStandIn) -> None:
        self.serve_url = serve_url
        self.work_url = work_url
        self.graph = graph
        self.http = httpx.AsyncClient(timeout=10)

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> int:
        response = await self.http.post(
            self.serve_url + "/webhook/whatsapp",
            content=body,
            headers=headers or signed_headers(body),
        )
        return response.status_code

    async def scrape(self) -> tuple[Samples, Samples]:
        return await scrape(self.serve_url + "/metrics"), await scrape(self.work_url + "/metrics")


def refuses_carol(request: Received) -> Scripted | None:
    """The Graph API takes every text but Carol's: 131026, undeliverable."""
    if request.is_text and request.to.lstrip("+") == CAROL:
        return error(131026, "Message undeliverable")
    return None


@pytest.fixture
async def pipeline(redis: Redis, redis_url: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    graph = GraphStandIn(script=refuses_carol)
    graph_server = Webhook(graph)
    await graph_server.start()
    serve_port, work_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "ZAPSTREAM_CONFIG": str(short_config(tmp_path)),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
        "WHATSAPP_API_URL": graph_server.url + "/v25.0",
    }
    serve = Command(
        "serve", ["serve", "--host", "127.0.0.1", "--port", str(serve_port)], env, tmp_path
    )
    work = Command("work", ["work", "--metrics-port", str(work_port)], env, tmp_path)
    serve_url, work_url = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{work_port}"
    graph.webhook_url, graph.app_secret = serve_url + "/webhook/whatsapp", SECRET
    pipe = Pipeline(serve_url, work_url, graph)
    try:
        await serve.start(serve_url + "/metrics")
        await work.start(work_url + "/metrics")
        yield pipe
    finally:
        await pipe.http.aclose()
        await graph.close()
        try:
            await work.stop()
        finally:
            await serve.stop()
            await graph_server.stop()


def old_text(customer: str, wamid: str) -> bytes:
    """A text written 25 hours ago: the 24-hour window is closed."""
    message = {
        "from": customer,
        "id": wamid,
        "timestamp": str(int(time.time()) - 25 * 3600),
        "type": "text",
        "text": {"body": "hello?"},
    }
    contacts = [{"profile": {"name": "Dave"}, "wa_id": customer}]
    return notification({"contacts": contacts, "messages": [message]}, BUSINESS)


async def settled(redis: Redis) -> bool:
    """Every reply has its outcome, every status is in, and every group has acked all."""
    replies = [f[b"type"] for _, f in await redis.xrange("zapstream:{p0}:replies")]
    outcomes = [t for t in replies if t in (b"reply.sent", b"reply.failed", b"reply.blocked")]
    if len(outcomes) < 4 or await redis.xlen("zapstream:{p0}:statuses") < 2:
        return False
    for key in STREAM_KEYS:
        for group in await redis.xinfo_groups(key):
            if group["lag"] or group["pending"]:
                return False
    return True


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_workload_moves_every_counter_by_what_it_did(
    pipeline: Pipeline, redis: Redis
) -> None:
    serve_before, work_before = await pipeline.scrape()

    for customer in (ALICE, BOB, CAROL):
        body = text_notification(BUSINESS, customer, f"wamid.M.{customer}", "Qual o horário?")
        assert await pipeline.post(body) == 200
    again = text_notification(BUSINESS, ALICE, f"wamid.M.{ALICE}", "Qual o horário?")
    assert await pipeline.post(again) == 200  # a redelivery: a duplicate
    forged = text_notification(BUSINESS, ALICE, "wamid.FORGED", "hi")
    assert await pipeline.post(forged, signed_headers(forged, "another-secret")) == 401
    assert await pipeline.post(old_text(DAVE, "wamid.OLD")) == 200
    await eventually(lambda: settled(redis), timeout=30, interval=0.05)

    serve_after, work_after = await pipeline.scrape()
    webhook = "zapstream_webhook_requests_total"
    # Five POSTs of the test and the two `sent` statuses the stand-in posted back.
    assert delta(serve_before, serve_after, webhook, code="200") == 7
    assert delta(serve_before, serve_after, webhook, code="401") == 1
    appended = "zapstream_events_appended_total"
    assert delta(serve_before, serve_after, appended, type="message.received") == 4
    assert delta(serve_before, serve_after, appended, type="status.updated") == 2
    dropped = "zapstream_duplicates_dropped_total"
    assert delta(serve_before, serve_after, dropped, stream="messages") == 1

    done = "zapstream_handler_done_total"
    # send: 3 reply.generated, and the 4 outcomes on the same stream (2 sent, 1 failed, and
    # Dave's reply.blocked); settle: the 2 statuses.
    handled = {"debounce": 4, "respond": 4, "send": 7, "settle": 2, "handoff": 0}
    for group, count in handled.items():
        assert delta(work_before, work_after, done, group=group) == count, group
        assert delta(work_before, work_after, "zapstream_handler_failed_total", group=group) == 0
        assert delta(work_before, work_after, "zapstream_dead_lettered_total", group=group) == 0
    sends = "zapstream_sends_total"
    assert delta(work_before, work_after, sends, result="sent", code="") == 2
    assert delta(work_before, work_after, sends, result="failed", code="131026") == 1
    assert sum(v for (n, _), v in work_after.items() if n == sends) == 3
    held = "zapstream_replies_held_total"
    assert delta(work_before, work_after, held, reason="window_closed") == 1
    assert delta(work_before, work_after, held, reason="handoff") == 0
    assert delta(work_before, work_after, "zapstream_replies_superseded_total") == 0
    latency = "zapstream_reply_latency_seconds"
    assert delta(work_before, work_after, latency + "_count") == 2
    assert delta(work_before, work_after, latency + "_bucket", le="30.0") == 2
    merged = "zapstream_turn_messages"
    assert delta(work_before, work_after, merged + "_count") == 4  # one turn per customer
    assert delta(work_before, work_after, merged + "_sum") == 4
    handler_seconds = "zapstream_handler_seconds_count"
    assert delta(work_before, work_after, handler_seconds, group="send") >= 7


async def test_figures_read_at_scrape_time_equal_what_redis_says(
    pipeline: Pipeline, redis: Redis
) -> None:
    body = text_notification(BUSINESS, ALICE, "wamid.M.1", "Olá")
    assert await pipeline.post(body) == 200
    await eventually(lambda: _sent(redis), timeout=30, interval=0.05)
    # A group no worker serves: what is appended lags; one entry read stays pending.
    await redis.xgroup_create(MESSAGES, "laggard", id="0")
    await redis.xreadgroup("laggard", "c1", {MESSAGES: ">"}, count=1)
    bob = [f"wamid.B.{n}" for n in range(3)]
    for wamid in bob:
        assert await pipeline.post(text_notification(BUSINESS, BOB, wamid, "oi")) == 200
    await eventually(lambda: _quiet_but(redis, "laggard", set(bob)), timeout=30, interval=0.05)
    # What the pipeline keeps beside the streams (set once it is quiet: a pause stops it).
    await redis.xadd("zapstream:{p0}:dead:send", {"type": "reply.generated", "dlq_error": "x"})
    await redis.zadd("zapstream:{p0}:doubt", {"s-1:1#0": 0})
    await redis.set("zapstream:paused", "WhatsApp error 190: token expired", px=60_000)

    serve, work = await pipeline.scrape()
    for key in STREAM_KEYS:
        for group in await redis.xinfo_groups(key):
            name = group["name"].decode()
            for samples in (serve, work):
                labels = {"group": name, "stream_key": key}
                assert value(samples, "zapstream_group_lag", **labels) == group["lag"], labels
                assert value(samples, "zapstream_group_pending", **labels) == group["pending"]
                assert value(samples, "zapstream_group_consumers", **labels) == group["consumers"]
    assert value(work, "zapstream_group_lag", group="laggard", stream_key=MESSAGES) == 3
    assert value(work, "zapstream_group_pending", group="laggard", stream_key=MESSAGES) == 1
    assert value(work, "zapstream_group_consumers", group="debounce", stream_key=MESSAGES) >= 1
    for samples in (serve, work):
        assert value(samples, "zapstream_dead_letters", group="send") == 1
        assert value(samples, "zapstream_dead_letters", group="debounce") == 0
        assert value(samples, "zapstream_replies_in_doubt") == 1
        assert value(samples, "zapstream_sending_paused") == 1
        assert value(samples, "zapstream_redis_memory_used_bytes") > 0
        assert value(samples, "zapstream_redis_read_failed") == 0
        for projection in ("sessions", "analytics", "archive"):  # no `project` ran
            assert value(samples, "zapstream_projection_started", projection=projection) == 0


async def test_no_secret_or_token_is_exported(pipeline: Pipeline, redis: Redis) -> None:
    body = text_notification(BUSINESS, ALICE, "wamid.S.1", "Olá")
    assert await pipeline.post(body) == 200
    await eventually(lambda: _sent(redis), timeout=30, interval=0.05)
    texts = [await scrape_text(url + "/metrics") for url in (pipeline.serve_url, pipeline.work_url)]
    for text in texts:
        for secret in (SECRET, VERIFY_TOKEN, ACCESS_TOKEN):
            assert secret not in text
        assert ALICE not in text and "wamid." not in text  # nor a customer, nor a message


async def test_project_shows_each_projection_checkpoint_lag(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """Analytics follows to 0 s behind; sessions, never run, shows its mirrored lag (5 s);
    archive shows it never ran."""
    topology = load_topology(short_config(tmp_path))
    first = int(time.time() * 1000) - 10_000
    for n, at in enumerate((first, first + 5000)):
        await redis.xadd(MESSAGES, encode_fields(_message(n)), id=f"{at}-0")
    await redis.hset("zapstream:projections", f"sessions:{MESSAGES}", f"{first}-0")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "DUCKDB_PATH": str(tmp_path / "analytics.duckdb"),
        "ZAPSTREAM_CONFIG": str(tmp_path / "streams.yaml"),
    }
    project = Command(
        "project",
        ["project", "--projection", "analytics", "--metrics-port", str(port)],
        env,
        tmp_path,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    await project.start(url)
    try:

        async def caught_up() -> Samples | None:
            samples = await scrape(url)
            lags = [
                value(
                    samples,
                    "zapstream_projection_lag_seconds",
                    projection="analytics",
                    stream_key=k,
                )
                for k in _keys(topology)
            ]
            found = (
                "zapstream_projection_lag_seconds",
                (("projection", "analytics"), ("stream_key", MESSAGES)),
            )
            return samples if found in samples and lags == [0.0] * len(lags) else None

        samples = await eventually(caught_up, timeout=30, interval=0.1)
    finally:
        await project.stop()
    lag = value(
        samples, "zapstream_projection_lag_seconds", projection="sessions", stream_key=MESSAGES
    )
    assert lag == 5.0
    assert value(samples, "zapstream_projection_started", projection="analytics") == 1
    assert value(samples, "zapstream_projection_started", projection="sessions") == 1
    assert value(samples, "zapstream_projection_started", projection="archive") == 0


async def test_metrics_answer_when_redis_does_not(
    own_redis: OwnRedis,
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
) -> None:
    """Redis stops answering: /metrics still answers, in time, with the process's own
    metrics, says the Redis read failed and leaves the Redis figures out; then recovers."""
    settings = make_settings(redis_url=own_redis.url)
    webhook: Webhook = await start_webhook(settings, make_topology(), Metrics())
    healthy = await scrape(webhook.url + "/metrics")
    assert value(healthy, "zapstream_redis_read_failed") == 0
    assert value(healthy, "zapstream_redis_memory_used_bytes") > 0
    own_redis.pause()
    try:
        started = time.monotonic()
        response = await http.get(webhook.url + "/metrics")
        took = time.monotonic() - started
    finally:
        own_redis.resume()
    assert response.status_code == 200 and took < 6
    failed = parse(response.text)
    assert value(failed, "zapstream_redis_read_failed") == 1
    assert not any(name == "zapstream_redis_memory_used_bytes" for name, _ in failed)
    assert "# TYPE zapstream_webhook_requests_total counter" in response.text
    recovered = await eventually(lambda: _read_ok(webhook.url + "/metrics"), timeout=15)
    assert value(recovered, "zapstream_redis_memory_used_bytes") > 0


class Gated:
    """A responder whose first answer waits until the test opens the gate; 7 tokens each."""

    def __init__(self) -> None:
        self.prompts = 0
        self.gate = asyncio.Event()

    async def answer(self, prompt: Prompt) -> Answer:
        self.prompts += 1
        if self.prompts == 1:
            await self.gate.wait()
        return Answer(body="Abrimos às 9h.", tokens=7)


async def test_a_superseded_reply_is_counted_with_its_tokens(
    redis: Redis, make_settings: Callable[..., Settings], make_topology: Callable[..., Topology]
) -> None:
    responder = Gated()
    topology = short(make_topology, debounce={"quiet": "200ms", "max_wait": "10s"})
    async with replying(redis, make_settings, topology, responder=responder) as pipe:
        await pipe.write(ALICE, "Qual o horário?")
        await eventually(lambda: responder.prompts == 1, timeout=10)  # answering turn 1
        await pipe.write(ALICE, "E no domingo?")
        await eventually(lambda: _debounced(redis, 2), timeout=10)
        responder.gate.set()
        await eventually(lambda: _sent(redis), timeout=15)
    sample = pipe.metrics.registry.get_sample_value
    assert sample("zapstream_replies_superseded_total") == 1
    assert sample("zapstream_superseded_tokens_total") == 7
    assert sample("zapstream_ai_tokens_total") == 14  # the superseded answer and the sent one
    assert sample("zapstream_turn_messages_count") == 2
    assert sample("zapstream_turn_messages_sum") == 2
    assert sample("zapstream_reply_latency_seconds_count") == 1
    assert sample("zapstream_sends_total", {"result": "sent", "code": ""}) == 1


async def _debounced(redis: Redis, messages: int) -> bool:
    """The debounce group has taken `messages` messages into its windows."""
    (group,) = await redis.xinfo_groups(MESSAGES)
    done = not (group["lag"] or group["pending"])
    return done and int(await redis.xlen(MESSAGES)) == messages


def test_error_codes_are_labelled_from_a_bounded_set() -> None:
    """Whatever code Meta sends, the `code` label of zapstream_sends takes a known value."""
    assert code_label(131026) == "131026" and code_label(190) == "190"
    assert code_label(987654) == "other" and code_label(None) == ""


async def _read_ok(url: str) -> Samples | None:
    samples = await scrape(url)
    return samples if value(samples, "zapstream_redis_read_failed") == 0 else None


async def _sent(redis: Redis) -> bool:
    replies = await redis.xrange("zapstream:{p0}:replies")
    return any(fields[b"type"] == b"reply.sent" for _, fields in replies)


async def _quiet_but(redis: Redis, lagging: str, answered: set[str]) -> bool:
    """Every group but `lagging` has acked everything, and every reply is sent, the last one
    answering every message of `answered`."""
    for key in STREAM_KEYS:
        for group in await redis.xinfo_groups(key):
            if group["name"].decode() != lagging and (group["lag"] or group["pending"]):
                return False
    replies = [fields for _, fields in await redis.xrange("zapstream:{p0}:replies")]
    types = [fields[b"type"] for fields in replies]
    covered = {
        wamid
        for fields in replies
        if fields[b"type"] == b"reply.generated"
        for wamid in msgspec.json.decode(fields[b"message_ids"])
    }
    return answered <= covered and types.count(b"reply.generated") == types.count(b"reply.sent")


def _keys(topology: Topology) -> list[str]:
    return [f"{topology.prefix}:{{p0}}:{stream}" for stream in topology.streams]


def _message(n: int) -> MessageReceived:
    return MessageReceived(
        session_id=f"s{n}",
        message_id=f"wamid.P.{n}",
        kind="text",
        from_=ALICE,
        customer=ALICE,
        phone_number_id=BUSINESS,
        timestamp=int(time.time()),
        data=msgspec.json.encode({"text": {"body": "hi"}}).decode(),
    )
