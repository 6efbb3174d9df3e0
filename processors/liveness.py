"""Liveness, specified once: a consumer is alive while its heartbeat key exists.

Each consumer refreshes `alive:<group>:<consumer>` in the partitions it reads, with an expiry
of the group's `idle` time. Entries pending for a consumer whose heartbeat expired are taken over
(XCLAIM, so two reclaimers never both get one); entries of a live consumer are never taken,
however long its handler runs. A consumer that was presumed dead and wakes up is fenced: its
ack and failure scripts check ownership in the same step (ack.lua, fail.lua). A dead consumer
is removed from the group only once it holds nothing (forget.lua), since XGROUP DELCONSUMER
drops the consumer's pending entries with it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from zapstream.connections import text
from zapstream.keys import alive_key, partition_of
from zapstream.scripts import Script
from zapstream.topology import GroupSpec, Topology

FORGET = Script(Path(__file__).with_name("forget.lua"))

# Racing reclaimers: XCLAIM with this min-idle succeeds for the first only (it resets idle).
CLAIM_MIN_IDLE_MS = 1000
RECLAIM_SCAN = 500


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int


def consumer_name() -> str:
    """Unique per process: host, pid and a random suffix (a restarted pid is another consumer)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def heartbeat_interval(spec: GroupSpec) -> float:
    return max(0.05, spec.idle / 3)


def reclaim_interval(spec: GroupSpec) -> float:
    return max(0.1, min(spec.idle / 2, 5.0))


async def beat(
    redis: Redis,
    topology: Topology,
    group: str,
    consumer: str,
    spec: GroupSpec,
    partitions: Sequence[int],
) -> None:
    """Refresh the consumer's heartbeat in the partitions it reads."""
    pipe = redis.pipeline(transaction=False)
    for partition in partitions:
        pipe.set(
            alive_key(topology, group, consumer, partition),
            consumer,
            px=max(1, int(spec.idle * 1000)),
        )
    await pipe.execute()


async def release(
    redis: Redis, topology: Topology, group: str, consumer: str, partitions: Sequence[int]
) -> None:
    """Drop the heartbeat at a clean stop, so others take what is left without waiting."""
    for partition in partitions:  # one key a call: on a cluster each may live elsewhere
        await redis.delete(alive_key(topology, group, consumer, partition))


async def reclaim(
    redis: Redis,
    topology: Topology,
    group: str,
    consumer: str,
    keys: list[str],
    holding: set[tuple[str, str]],
) -> list[Claimed]:
    """Take over entries whose owner's heartbeat expired, and own entries this process lost.

    Entries whose messages were deleted from the stream leave the pending list on XCLAIM.
    """
    claimed: list[Claimed] = []
    for key in keys:
        rows: list[dict[str, Any]] = await redis.xpending_range(
            key, group, min="-", max="+", count=RECLAIM_SCAN, idle=CLAIM_MIN_IDLE_MS
        )
        if not rows:
            continue
        owners = sorted({text(row["consumer"]) for row in rows} - {consumer})
        partition = partition_of(key)
        alive = await _alive(redis, topology, group, owners, partition)
        wanted = [
            row
            for row in rows
            if (text(row["consumer"]) != consumer and not alive[text(row["consumer"])])
            or (text(row["consumer"]) == consumer and (key, text(row["message_id"])) not in holding)
        ]
        if not wanted:
            continue
        deliveries = {text(row["message_id"]): int(row["times_delivered"]) for row in wanted}
        entries: list[Any] = await redis.xclaim(
            key, group, consumer, CLAIM_MIN_IDLE_MS, [row["message_id"] for row in wanted]
        )
        for entry_id, fields in entries:
            if fields is None:
                continue
            text_id = text(entry_id)
            claimed.append(
                Claimed(
                    key=key,
                    entry_id=text_id,
                    fields=fields,
                    deliveries=deliveries.get(text_id, 0) + 1,
                )
            )
    return claimed


async def forget_dead_consumers(
    redis: Redis, topology: Topology, group: str, consumer: str, spec: GroupSpec, keys: list[str]
) -> list[str]:
    """Remove consumers that are dead, idle past the group's idle time, and hold nothing."""
    forgotten: list[str] = []
    for key in keys:
        for info in await redis.xinfo_consumers(key, group):
            name = text(info["name"])
            if name == consumer or int(info["pending"]) > 0 or int(info["idle"]) < spec.idle * 1000:
                continue
            if await forget(redis, topology, group, name, key):
                forgotten.append(name)
    return forgotten


async def forget(redis: Redis, topology: Topology, group: str, consumer: str, key: str) -> bool:
    """Remove `consumer` from the group on `key` if it has no heartbeat and holds nothing."""
    alive = alive_key(topology, group, consumer, partition_of(key))
    return bool(await FORGET.run(redis, [key, alive], [group, consumer]))


async def _alive(
    redis: Redis, topology: Topology, group: str, consumers: list[str], partition: int
) -> dict[str, bool]:
    if not consumers:
        return {}
    pipe = redis.pipeline(transaction=False)
    for name in consumers:
        pipe.exists(alive_key(topology, group, name, partition))
    results: list[Any] = await pipe.execute()
    return {name: bool(found) for name, found in zip(consumers, results, strict=True)}
