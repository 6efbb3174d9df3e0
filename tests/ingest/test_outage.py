"""A Redis that stops or stalls: 503 within the timeout, and Meta's retry appends each once.

Each test owns its redis-server (AOF, appendfsync always) on another port; the machine's
Redis is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from structlog.testing import capture_logs

from tests.notifications import fixture_bytes, signed_headers
from tests.servers import OwnRedis, Webhook
from zapstream.connections import open_redis
from zapstream.settings import Settings
from zapstream.topology import Topology

PATH = "/webhook/whatsapp"
BODY = fixture_bytes("batch_multi.json")  # two messages


async def post(http: httpx.AsyncClient, webhook: Webhook) -> httpx.Response:
    return await http.post(webhook.url + PATH, content=BODY, headers=signed_headers(BODY))


async def stream_lengths(url: str) -> int:
    async with open_redis(url) as redis:
        return int(await redis.xlen("zapstream:{p0}:messages"))


async def test_stopped_redis_gives_503_then_the_retry_appends_once(
    own_redis: OwnRedis,
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
) -> None:
    webhook = await start_webhook(
        make_settings(redis_url=own_redis.url), make_topology(webhook={"append_timeout": "2s"})
    )
    own_redis.stop()
    response = await post(http, webhook)
    assert response.status_code == 503
    own_redis.start()  # same data directory: the AOF is replayed, no script is cached
    assert await stream_lengths(own_redis.url) == 0  # nothing was appended by the 503
    assert (await post(http, webhook)).status_code == 200
    assert (await post(http, webhook)).json() == {"appended": 0, "duplicates": 2}
    assert await stream_lengths(own_redis.url) == 2


async def test_paused_redis_gives_503_within_the_timeout_then_one_entry_each(
    own_redis: OwnRedis,
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
) -> None:
    timeout = 1.0
    webhook = await start_webhook(
        make_settings(redis_url=own_redis.url), make_topology(webhook={"append_timeout": timeout})
    )
    assert (await http.get(webhook.url + "/ready")).status_code == 200
    own_redis.pause()
    try:
        started = time.monotonic()
        response = await post(http, webhook)
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert elapsed < timeout + 2.0, f"503 after {elapsed:.2f}s"
        ready = await http.get(webhook.url + "/ready")
        assert ready.status_code == 503 and "redis" in ready.text
    finally:
        own_redis.resume()
    # The stalled append may have run once Redis resumed; Meta's retry leaves one entry each.
    retries = await asyncio.gather(post(http, webhook), post(http, webhook))
    assert [r.status_code for r in retries] == [200, 200]
    assert await stream_lengths(own_redis.url) == 2
    assert (await http.get(webhook.url + "/ready")).status_code == 200


async def test_restarted_redis_after_a_pause_leaves_one_entry_per_message(
    own_redis: OwnRedis,
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
) -> None:
    webhook = await start_webhook(
        make_settings(redis_url=own_redis.url), make_topology(webhook={"append_timeout": "1s"})
    )
    own_redis.pause()
    assert (await post(http, webhook)).status_code == 503
    own_redis.stop()  # killed while paused: the stalled append never ran
    own_redis.start()
    assert (await post(http, webhook)).status_code == 200
    assert (await post(http, webhook)).status_code == 200
    assert await stream_lengths(own_redis.url) == 2


async def test_a_redis_that_may_evict_dedup_records_is_warned_about(
    own_redis: OwnRedis,
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    async with open_redis(own_redis.url) as redis:
        await redis.config_set("maxmemory-policy", "volatile-lru")
    with capture_logs() as logs:
        await start_webhook(make_settings(redis_url=own_redis.url), make_topology())
    warnings = [e for e in logs if e["event"] == "redis_may_evict_dedup_records"]
    assert warnings and warnings[0]["maxmemory_policy"] == "volatile-lru"

    async with open_redis(own_redis.url) as redis:
        await redis.config_set("maxmemory-policy", "noeviction")
    with capture_logs() as logs:
        await start_webhook(make_settings(redis_url=own_redis.url), make_topology())
    assert not [e for e in logs if e["event"] == "redis_may_evict_dedup_records"]


async def test_a_webhook_started_while_redis_is_down_answers_503_then_200(
    own_redis: OwnRedis,
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    http: httpx.AsyncClient,
) -> None:
    own_redis.stop()  # nothing listens on its port while the webhook starts
    webhook = await start_webhook(
        make_settings(redis_url=own_redis.url), make_topology(webhook={"append_timeout": "2s"})
    )
    assert (await post(http, webhook)).status_code == 503
    ready = await http.get(webhook.url + "/ready")
    assert ready.status_code == 503 and "redis" in ready.text
    own_redis.start()
    assert (await post(http, webhook)).status_code == 200
    assert await stream_lengths(own_redis.url) == 2  # the body holds two events
