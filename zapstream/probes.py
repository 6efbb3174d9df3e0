"""/health, /ready and /metrics, for every long-running command (serve, work, project)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from zapstream.connections import ping_redis
from zapstream.metrics import metrics_endpoint
from zapstream.topology import Topology

Check = Callable[[], Awaitable[str]]  # "" when fine, else what failed


def probe_routes(
    redis_of: Callable[[Request], Redis], topology: Topology, checks: Sequence[Check] = ()
) -> list[Route]:
    """The probe routes; `/ready` answers 200 while the Redis `redis_of(request)` answers and
    every check passes, else 503 naming what failed; `/metrics` reads that Redis too (the
    app's `state.metrics` is the process's Metrics)."""

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def ready(request: Request) -> PlainTextResponse:
        problem = await ping_redis(redis_of(request))
        for check in checks:
            problem = problem or await check()
        if problem:
            return PlainTextResponse(f"not ready: {problem}\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics(request: Request) -> Response:
        return await metrics_endpoint(request.app.state.metrics, redis_of(request), topology)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
