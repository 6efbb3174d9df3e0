"""Clients opened in one place, as async context managers, and passed down as arguments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import BlockingConnectionPool, Redis

# Every Redis call is bounded: connecting, each socket read, and waiting for a pooled connection.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0


@asynccontextmanager
async def open_redis(url: str, *, max_connections: int = 64) -> AsyncIterator[Redis]:
    """A Redis client on `url` (bytes in, bytes out); closed with its pool on exit."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_keepalive=True,
    )
    client = Redis(connection_pool=pool)
    try:
        yield client
    finally:
        await client.aclose()
        await pool.aclose()


async def ping_redis(redis: Redis, timeout: float = 2.0) -> str | None:
    """None when Redis answers within `timeout`, else why not."""
    try:
        async with asyncio.timeout(timeout):
            await redis.ping()
    except TimeoutError:
        return f"redis: no answer within {timeout:g}s"
    except Exception as err:  # any failure to answer is a readiness answer, not a crash
        return f"redis: {type(err).__name__}: {err}"
    return None
