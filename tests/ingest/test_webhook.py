"""The webhook over real HTTP on loopback, appending to a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.ingest.test_payload import GOOD
from tests.notifications import (
    NEXT_SECRET,
    SECRET,
    VERIFY_TOKEN,
    fixture_bytes,
    messages_notification,
    signed_headers,
    text_message,
)
from tests.servers import Webhook
from tests.waiting import eventually
from zapstream.settings import Settings
from zapstream.topology import Topology

MESSAGES = "zapstream:{p0}:messages"
STATUSES = "zapstream:{p0}:statuses"
PATH = "/webhook/whatsapp"


async def entries(redis: Redis, stream: str) -> list[dict[str, str]]:
    """Every entry of a stream, each field decoded as UTF-8 (fails if any is not text)."""
    return [
        {k.decode("utf-8"): v.decode("utf-8") for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


async def all_entries(redis: Redis) -> list[dict[str, str]]:
    return await entries(redis, MESSAGES) + await entries(redis, STATUSES)


async def post(
    http: httpx.AsyncClient, webhook: Webhook, body: bytes, secret: str = SECRET
) -> httpx.Response:
    return await http.post(webhook.url + PATH, content=body, headers=signed_headers(body, secret))


@pytest.mark.parametrize("name", sorted(GOOD))
async def test_each_good_fixture_appends_its_entries_as_text(
    name: str, webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    response = await post(http, webhook, fixture_bytes(name))
    assert response.status_code == 200
    assert response.json() == {"appended": len(GOOD[name]), "duplicates": 0}
    got = await all_entries(redis)
    assert [(e["type"], e.get("kind") or e["status"]) for e in got] == GOOD[name]
    document = json.loads(fixture_bytes(name))
    wamids = [
        item["id"]
        for entry in document["entry"]
        for change in entry["changes"]
        for item in change["value"].get("messages", []) + change["value"].get("statuses", [])
    ]
    assert [e["message_id"] for e in got] == wamids
    for entry in got:
        assert entry["v"] == "1"
        assert list(entry)[:3] == ["type", "v", "session_id"]
        if entry["type"] == "message.received":
            assert entry["session_id"], "an inbound message always has a session"
            assert entry["phone_number_id"] == "100000000000001"
            assert json.loads(entry["data"])["id"] == entry["message_id"]
        else:
            assert entry["session_id"] == ""  # no outbound wamid recorded: session unknown


async def test_wrong_types_message_gives_200_and_four_rejections(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    response = await post(http, webhook, fixture_bytes("bad/wrong_types_message.json"))
    assert response.status_code == 200
    got = await entries(redis, MESSAGES)
    assert [e["type"] for e in got] == ["message.rejected"] * 4
    assert all(e["reason"] and json.loads(e["raw"]) for e in got)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("bad/not_json.json", 400),
        ("bad/empty_body.json", 400),
        ("bad/truncated.json", 400),
        ("bad/json_array_top_level.json", 400),
        ("bad/wrong_types_envelope.json", 400),
        ("bad/wrong_object.json", 200),
        ("bad/empty_entry.json", 200),
        ("bad/missing_messages_and_statuses.json", 200),
        ("bad/other_field_template_status.json", 200),
    ],
)
async def test_bad_fixtures_get_the_contract_answer_and_append_nothing(
    name: str, status: int, webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    response = await post(http, webhook, fixture_bytes(name))
    assert response.status_code == status
    assert await all_entries(redis) == []


async def test_oversized_body_gets_413_before_it_is_read(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    limit = make_topology().webhook.max_body
    single = json.loads(fixture_bytes("text_single.json"))
    message = single["entry"][0]["changes"][0]["value"]["messages"][0]
    count = (limit + 100_000) // 4000 + 1  # past the cap, like Meta's 3.25 MiB huge fixture
    messages = [
        {**message, "id": f"wamid.HUGE{i}", "text": {"body": "x" * 4000}} for i in range(count)
    ]
    body = messages_notification(*messages)
    assert len(body) > limit
    response = await post(http, webhook, body)
    assert response.status_code == 413

    async def chunks() -> Any:  # no Content-Length: the cap holds while streaming
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    streamed = await http.post(webhook.url + PATH, content=chunks(), headers=signed_headers(body))
    assert streamed.status_code == 413
    assert await all_entries(redis) == []


async def test_same_post_100_times_concurrently_appends_each_message_once(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    body = fixture_bytes("batch_multi.json")
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=100)) as many:
        responses = await asyncio.gather(*(post(many, webhook, body) for _ in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["appended"] for r in responses) == 2
    assert len(await entries(redis, MESSAGES)) == 2

    # A retry serialised differently (pretty-printed, keys reordered, unicode unescaped),
    # signed anew, is still the same messages.
    document = json.loads(body)
    reserialised = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()
    assert reserialised != body
    response = await post(http, webhook, reserialised)
    assert response.json() == {"appended": 0, "duplicates": 2}
    assert len(await entries(redis, MESSAGES)) == 2


async def test_1000_distinct_messages_over_50_connections_append_exactly_1000(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    bodies = [
        messages_notification(text_message(f"wamid.DISTINCT{i:04d}", f"1555{i % 37:07d}", f"m{i}"))
        for i in range(1000)
    ]
    queue = list(reversed(bodies))
    codes: list[int] = []

    async def connection() -> None:
        # One client per connection: httpx's shared pool is slow to hand out 50 connections.
        async with httpx.AsyncClient(timeout=15) as client:
            while queue:
                body = queue.pop()
                response = await client.post(
                    webhook.url + PATH, content=body, headers=signed_headers(body)
                )
                codes.append(response.status_code)

    await asyncio.gather(*(connection() for _ in range(50)))
    assert codes == [200] * 1000
    got = await entries(redis, MESSAGES)
    assert len(got) == 1000
    assert len({e["message_id"] for e in got}) == 1000


@pytest.mark.parametrize("case", ["none", "wrong secret", "one byte changed", "malformed"])
async def test_bad_signatures_get_401_and_append_nothing(
    case: str, webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    body = fixture_bytes("text_single.json")
    headers = signed_headers(body)
    if case == "none":
        del headers["X-Hub-Signature-256"]
    elif case == "wrong secret":
        headers = signed_headers(body, "not-the-secret")
    elif case == "one byte changed":
        body = body.replace(b"Sunday", b"Sundae")
    else:
        headers["X-Hub-Signature-256"] = "sha256=" + "\u00e9" * 32  # a forged non-ASCII value
    raw_headers = {k: v.encode("utf-8") for k, v in headers.items()}
    response = await http.post(webhook.url + PATH, content=body, headers=raw_headers)
    assert response.status_code == 401
    assert await all_entries(redis) == []


async def test_second_secret_of_a_rotation_is_accepted(
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
    redis: Redis,
) -> None:
    rotating = await start_webhook(
        make_settings(app_secrets=(SECRET, NEXT_SECRET)), make_topology()
    )
    first = await post(http, rotating, fixture_bytes("text_single.json"), NEXT_SECRET)
    second = await post(http, rotating, fixture_bytes("text_burst_1.json"), SECRET)
    assert (first.status_code, second.status_code) == (200, 200)
    assert len(await entries(redis, MESSAGES)) == 2


async def test_verification_handshake(webhook: Webhook, http: httpx.AsyncClient) -> None:
    ok = await http.get(
        webhook.url + PATH,
        params={
            "hub.mode": "subscribe",
            "hub.challenge": "1158201444",
            "hub.verify_token": VERIFY_TOKEN,
        },
    )
    assert ok.status_code == 200
    assert ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    for params in (
        {"hub.mode": "subscribe", "hub.challenge": "x", "hub.verify_token": "wrong"},
        {"hub.mode": "unsubscribe", "hub.challenge": "x", "hub.verify_token": VERIFY_TOKEN},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
    ):
        refused = await http.get(webhook.url + PATH, params=params)
        assert refused.status_code == 403


async def test_expired_dedup_record_lets_the_message_in_again(
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
    redis: Redis,
) -> None:
    # A window wide enough that the redelivery right after the first POST falls inside it
    # on a loaded machine (1 s did not, once, in CI).
    short = await start_webhook(make_settings(), make_topology(dedup={"window": "3s"}))
    body = fixture_bytes("text_single.json")
    assert (await post(http, short, body)).json() == {"appended": 1, "duplicates": 0}
    assert (await post(http, short, body)).json() == {"appended": 0, "duplicates": 1}

    async def appended_again() -> bool:
        return bool((await post(http, short, body)).json()["appended"])

    await eventually(appended_again, timeout=15, interval=0.2)
    assert len(await entries(redis, MESSAGES)) == 2


async def test_probes_and_metrics(webhook: Webhook, http: httpx.AsyncClient) -> None:
    assert (await http.get(webhook.url + "/health")).status_code == 200
    assert (await http.get(webhook.url + "/ready")).status_code == 200
    await post(http, webhook, fixture_bytes("text_single.json"))
    await post(http, webhook, fixture_bytes("text_single.json"))
    await http.post(webhook.url + PATH, content=b"{}", headers={"X-Hub-Signature-256": "sha256=0"})
    text = (await http.get(webhook.url + "/metrics")).text
    assert 'zapstream_webhook_requests_total{code="200"} 2.0' in text
    assert 'zapstream_webhook_requests_total{code="401"} 1.0' in text
    assert 'zapstream_events_appended_total{type="message.received"} 1.0' in text
    assert 'zapstream_duplicates_dropped_total{stream="messages"} 1.0' in text
