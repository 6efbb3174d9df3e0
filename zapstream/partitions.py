"""The partition count is fixed for the life of a log: recorded once, checked at every start.

A conversation's partition is `partition_for(conversation, count)` (keys.py): CRC-32 of
`<phone_number_id>:<customer>` modulo the count. Another count sends the same customer to
another hash tag, where their session, their dedup records (a redelivery within the 7-day
window would be appended again), their open debounce window and their unanswered turns are
not. So the first command to start records the count in `<prefix>:layout`, and every command
that starts later refuses a streams.yaml that says otherwise, naming both counts. README
"Scaling out" says how to move to another count: a new `prefix`, with the old one drained.
"""

from __future__ import annotations

import asyncio

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from zapstream.connections import open_redis
from zapstream.settings import ConfigError, Settings
from zapstream.topology import Topology

log = structlog.get_logger()

CHECK_TIMEOUT_S = 5.0


def layout_key(topology: Topology) -> str:
    return f"{topology.prefix}:layout"


async def check_partitions(settings: Settings, topology: Topology) -> None:
    """Record the count if none is; raise ConfigError if the log was written with another.

    When Redis does not answer, the command starts anyway (the webhook answers 503 until it
    does) and says that the count went unchecked."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), open_redis(settings.redis_url) as redis:
            key = layout_key(topology)
            await redis.hsetnx(key, "partitions", topology.partitions)
            recorded = int(await redis.hget(key, "partitions") or topology.partitions)
    except (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError) as err:
        log.warning("partitions_unchecked", error=f"{type(err).__name__}: {err}")
        return
    if recorded != topology.partitions:
        raise ConfigError(
            f"{settings.config_path}: partitions is {topology.partitions}, but the log at "
            f"REDIS_URL was written with {recorded}: changing the count of a live log is "
            'refused (README "Scaling out": use a new prefix)'
        )
