"""/health, /ready and /metrics, for every long-running command (serve, work, later project)."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from zapstream.connections import ping_redis
from zapstream.metrics import metrics_endpoint


def probe_routes(redis_of: Callable[[Request], Redis]) -> list[Route]:
    """The probe routes; `/ready` answers 200 while the Redis `redis_of(request)` answers."""

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def ready(request: Request) -> PlainTextResponse:
        problem = await ping_redis(redis_of(request))
        if problem:
            return PlainTextResponse(f"not ready: {problem}\n", status_code=503)
        return PlainTextResponse("ready\n")

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
