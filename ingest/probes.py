"""/health and /ready for the webhook server."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse

from zapstream.connections import ping_redis


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


async def ready(request: Request) -> PlainTextResponse:
    problem = await ping_redis(request.state.ingest.redis)
    if problem:
        return PlainTextResponse(f"not ready: {problem}\n", status_code=503)
    return PlainTextResponse("ready\n")
