"""create_app(): the webhook's routes and the lifespan that opens Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest.append import AppendBatcher
from ingest.webhook import IngestContext, receive_notification, verify_subscription
from zapstream.connections import open_redis
from zapstream.metrics import Metrics
from zapstream.probes import probe_routes
from zapstream.settings import Settings
from zapstream.topology import Topology

log = structlog.get_logger()

WEBHOOK_PATH = "/webhook/whatsapp"


async def warn_if_evicting(redis: Redis) -> None:
    """Warn when Redis may evict dedup records: every policy but noeviction can."""
    try:
        async with asyncio.timeout(2):
            config = await redis.config_get("maxmemory-policy")
    except Exception as err:  # CONFIG may be disabled on a managed Redis; then we cannot tell
        log.warning("redis_policy_unknown", error=f"{type(err).__name__}: {err}")
        return
    values: dict[Any, Any] = dict(config)
    policy = values.get(b"maxmemory-policy") or values.get("maxmemory-policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy != "noeviction":
        log.warning(
            "redis_may_evict_dedup_records",
            maxmemory_policy=policy,
            advice="set maxmemory-policy noeviction",
        )


class _NotificationsFirst:
    """Every notification POST goes straight to its plain ASGI handler: it is the hot path,
    and Starlette's middleware and routing would add a tenth to its cost. Everything else,
    lifespan included, goes through the Starlette app."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == WEBHOOK_PATH:
            await receive_notification(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(
    settings: Settings, topology: Topology, metrics: Metrics, *, redis: Redis | None = None
) -> ASGIApp:
    """The webhook app; it opens its own Redis client unless given one (as `run` does)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, IngestContext]]:
        async with contextlib.AsyncExitStack() as stack:
            client = redis
            if client is None:
                client = await stack.enter_async_context(open_redis(settings.redis_url))
            await warn_if_evicting(client)
            appender = AppendBatcher(client, topology)
            stack.push_async_callback(appender.close)
            yield {
                "ingest": IngestContext(
                    redis=client,
                    appender=appender,
                    settings=settings,
                    topology=topology,
                    metrics=metrics,
                )
            }

    routes = [
        Route(WEBHOOK_PATH, verify_subscription, methods=["GET"]),
        *probe_routes(lambda request: request.state.ingest.redis, topology),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return _NotificationsFirst(app)
