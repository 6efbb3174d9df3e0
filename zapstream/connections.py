"""Clients opened in one place, as async context managers, and passed down as arguments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Every Redis call is bounded: connecting, each socket read, and waiting for a pooled connection.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0
CLUSTER_MAX_CONNECTIONS = 1000  # per node

log = structlog.get_logger()


@asynccontextmanager
async def open_redis(url: str, *, max_connections: int = 64) -> AsyncIterator[Redis]:
    """A Redis client on `url` (bytes in, bytes out); closed with its pool on exit.

    When `url` names a node of a Redis Cluster, the client is a RedisCluster that finds the
    other nodes and routes each command by its key's slot. It offers the commands zapstream
    uses under the same names, so it is handed on typed as Redis: everything zapstream sends
    in one command or script stays within one hash tag (keys.py), as a cluster requires.
    """
    if await _is_cluster(url):
        cluster = RedisCluster.from_url(
            url,
            # A cluster client opens connections per node and refuses past the limit instead
            # of waiting, so its limit is a ceiling, not a pool size.
            max_connections=max(max_connections, CLUSTER_MAX_CONNECTIONS),
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_keepalive=True,
        )
        try:
            await cluster.initialize()
            yield cast(Redis, cluster)
        finally:
            await cluster.aclose()
        return
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


def text(value: Any) -> str:
    """A name or id as Redis answers it (bytes from a client without decode_responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_cluster(redis: Redis) -> bool:
    """Whether `redis` (from open_redis) is a Redis Cluster client."""
    return isinstance(redis, RedisCluster)


def sibling(redis: Redis) -> Redis:
    """Another client of the same Redis, whose response callbacks may be changed without
    touching `redis`'s: over the same pool for a single Redis (closing it leaves the pool
    open), with connections of its own for a cluster (redis-py's cluster client has no
    shared pool)."""
    if not is_cluster(redis):
        return Redis(connection_pool=redis.connection_pool)
    node = cast(RedisCluster, redis).get_default_node()
    cluster = RedisCluster(
        host=node.host,
        port=node.port,
        max_connections=CLUSTER_MAX_CONNECTIONS,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_keepalive=True,
    )
    return cast(Redis, cluster)


async def memory(redis: Redis) -> tuple[int, int]:
    """Bytes used and the limit (0: none), of INFO memory; summed over a cluster's primaries."""
    if not is_cluster(redis):
        info: dict[str, Any] = await redis.info("memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    by_node: dict[str, Any] = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
    used = sum(int(node.get("used_memory", 0)) for node in by_node.values())
    limit = sum(int(node.get("maxmemory", 0)) for node in by_node.values())
    return used, limit


async def _is_cluster(url: str) -> bool:
    """Ask the node itself (INFO cluster): no setting to get wrong. A Redis that does not
    answer yet is taken for a single one, whose client connects when it is first used: the
    webhook then starts and answers 503 until Redis does (a cluster must answer at start)."""
    probe = Redis.from_url(
        url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S, socket_timeout=REDIS_SOCKET_TIMEOUT_S
    )
    try:
        info = await probe.info("cluster")
    except (OSError, RedisConnectionError, RedisTimeoutError) as err:
        log.warning("redis_unreachable_at_start", error=f"{type(err).__name__}: {err}")
        return False
    finally:
        await probe.aclose()
    return bool(info.get("cluster_enabled"))


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
