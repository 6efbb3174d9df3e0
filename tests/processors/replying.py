"""The whole reply path in the test's event loop: the real webhook, every group of the
pipeline, a Graph API stand-in and a handoff receiver, each a real HTTP server on 127.0.0.1.

Customers write through signed webhook POSTs with current timestamps; the stand-in reports
each accepted message's `sent` status back to the webhook, as Meta does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from ingest.app import create_app
from processors.graph import Graph
from processors.groups import HANDLERS, TICKS
from processors.rules import RulesResponder
from processors.runtime import GroupRunner, HandlerContext
from tests.notifications import BUSINESS, SECRET
from tests.servers import Webhook
from zapstream.envelope import decode_fields
from zapstream.events import Event
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.signing import sign
from zapstream.standin import GraphStandIn, lifespan, text_notification
from zapstream.topology import Topology

REPLIES = "zapstream:{p0}:replies"
HANDOFFS = "zapstream:{p0}:handoffs"
GROUPS = ("debounce", "respond", "send", "settle", "handoff")
HANDOFF_SECRET = "test-handoff-secret"


def short(make_topology: Callable[..., Topology], **sections: Any) -> Topology:
    """Test windows: 200 ms quiet, 1 s max wait, 2 s doubt, quick backoff, pause 1 s."""
    group = {"idle": "2s", "backoff": {"base": "50ms", "factor": 2, "max": "500ms"}}
    groups = {
        "debounce": {"streams": ["messages"], "concurrency": 8, **group},
        "respond": {"streams": ["turns"], "concurrency": 8, **group},
        "send": {"streams": ["replies"], "concurrency": 8, "max_failures": 3, **group},
        "settle": {"streams": ["statuses"], "concurrency": 4, **group},
        "handoff": {"streams": ["handoffs"], "concurrency": 2, "max_failures": 3, **group},
    }
    values: dict[str, Any] = {
        "debounce": {"quiet": "200ms", "max_wait": "1s"},
        "send": {"timeout": "1s", "doubt": "2s", "pause": "1s"},
        "rate_limits": {
            "per_number": {"rate": 1000, "per": "1s", "burst": 100},
            "per_customer": {"rate": 100, "per": "1s", "burst": 10},
        },
        "groups": groups,
    }
    values.update(sections)
    return make_topology(**values)


class Receiver:
    """The handoff receiver: records each POST (headers and raw body), answers as scripted."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answers for the next POSTs; then 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class Pipeline:
    """What a test drives and looks at."""

    def __init__(
        self, redis: Redis, webhook: Webhook, graph: GraphStandIn, receiver: Receiver
    ) -> None:
        self.redis = redis
        self.webhook = webhook
        self.graph = graph
        self.receiver = receiver
        self.metrics = Metrics()
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=10)

    async def write(self, customer: str, text: str, *, business: str = BUSINESS) -> str:
        """The customer sends a text now; its wamid."""
        wamid = f"wamid.IN.{customer}.{next(self._ids)}"
        await self.post(text_notification(business, customer, wamid, text))
        return wamid

    async def post(self, body: bytes) -> None:
        headers = {"X-Hub-Signature-256": sign(body, SECRET), "Content-Type": "application/json"}
        response = await self._http.post(
            self.webhook.url + "/webhook/whatsapp", content=body, headers=headers
        )
        assert response.status_code == 200, response.text

    async def events(self, stream: str = REPLIES) -> list[Event]:
        return [decode_fields(fields) for _, fields in await self.redis.xrange(stream)]

    async def of_type(self, kind: type[Event], stream: str = REPLIES) -> list[Any]:
        return [e for e in await self.events(stream) if isinstance(e, kind)]

    async def close(self) -> None:
        await self._http.aclose()


@asynccontextmanager
async def replying(
    redis: Redis,
    make_settings: Callable[..., Settings],
    topology: Topology,
    *,
    responder: Any = None,
    graph: GraphStandIn | None = None,
    groups: tuple[str, ...] = GROUPS,
) -> AsyncIterator[Pipeline]:
    receiver = Receiver()
    receiver_server = Webhook(receiver)
    await receiver_server.start()
    graph = graph or GraphStandIn()
    graph_server = Webhook(graph)
    await graph_server.start()
    settings = make_settings(
        api_url=graph_server.url + "/v25.0",
        handoff_webhook_url=receiver_server.url + "/handoffs",
        handoff_webhook_secret=HANDOFF_SECRET,
    )
    metrics = Metrics()
    webhook = Webhook(create_app(settings, topology, metrics))
    await webhook.start()
    graph.webhook_url = webhook.url + "/webhook/whatsapp"
    graph.app_secret = SECRET
    pipeline = Pipeline(redis, webhook, graph, receiver)
    async with httpx.AsyncClient(timeout=30) as http, Graph.open(settings) as cloud_api:
        ctx = HandlerContext(
            redis=redis,
            settings=settings,
            topology=topology,
            metrics=pipeline.metrics,
            http=http,
            graph=cloud_api,
            responder=responder or RulesResponder(),
        )
        runners = [GroupRunner(ctx, g, HANDLERS[g], tick=TICKS.get(g)) for g in groups]
        tasks = [asyncio.create_task(r.run()) for r in runners]
        try:
            yield pipeline
        finally:
            for runner in runners:
                runner.stop()
            await graph.close()  # releases hanging answers, so in-flight sends finish
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)
            await pipeline.close()
            for server in (webhook, graph_server, receiver_server):
                await server.stop()


def decode(body: bytes) -> Any:
    return msgspec.json.decode(body)
