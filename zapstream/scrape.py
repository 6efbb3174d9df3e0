"""What /metrics reads from Redis at each scrape: the figures no process counts by itself.

Lag and pending entries per group, dead letters, replies in doubt, whether sending is paused,
Redis's memory and how far each projection's checkpoint is behind its stream belong to the
shared Redis, not to one process: any process may die or never have run, so they are read
when Prometheus asks, from every command's /metrics alike. One round trip for the plain
figures (pipelined) beside two per stream key for the groups (group_stats), all within
SCRAPE_TIMEOUT_S; a scrape that gets no answer in time still answers with the process's own
metrics and says that the Redis read failed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from redis.asyncio import Redis

from zapstream.connections import memory, text
from zapstream.groupstats import GroupStats, group_stats
from zapstream.keys import dead_letter_key, doubt_key, paused_key, projections_key, stream_keys
from zapstream.topology import Topology

# Well inside Prometheus's default scrape timeout (10 s).
SCRAPE_TIMEOUT_S = 3.0


class ProjectionLag(msgspec.Struct, frozen=True, kw_only=True):
    projection: str
    key: str  # the stream's Redis key
    seconds: float  # from the checkpoint's entry to the stream's last entry; 0 when caught up


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    groups: list[GroupStats]  # every group of every stream key, declared in streams.yaml or not
    dead_letters: dict[str, int]  # group -> entries in its dead-letter streams (all partitions)
    in_doubt: int  # reply parts in doubt, all partitions
    paused: bool  # sending is paused (an auth or account error)
    memory_used: int  # bytes, INFO memory used_memory
    maxmemory: int  # bytes; 0 when Redis has no limit
    projections: dict[str, bool]  # projection -> whether it ever mirrored a checkpoint
    projection_lags: list[ProjectionLag]


async def read_figures(redis: Redis, topology: Topology) -> Figures:
    """The figures as Redis has them now; raises what Redis raised, or TimeoutError."""
    keys = [key for stream in topology.streams for key in stream_keys(topology, stream)]
    async with asyncio.timeout(SCRAPE_TIMEOUT_S):
        plain, used, *per_key = await asyncio.gather(
            _read_plain(redis, topology, keys),
            memory(redis),  # not pipelined: a cluster pipeline refuses INFO
            *(group_stats(redis, key) for key in keys),
        )
    return _figures(
        topology, keys, [*plain, used], [g for found in per_key for g in found.values()]
    )


async def _read_plain(redis: Redis, topology: Topology, keys: list[str]) -> list[Any]:
    partitions = range(topology.partitions)
    pipe = redis.pipeline(transaction=False)
    for group in topology.groups:
        for partition in partitions:
            pipe.xlen(dead_letter_key(topology, group, partition))
    for partition in partitions:
        pipe.zcard(doubt_key(topology, partition))
    pipe.exists(paused_key(topology))
    pipe.hgetall(projections_key(topology))
    for key in keys:
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
    found: list[Any] = await pipe.execute()
    return found


def _figures(
    topology: Topology, keys: list[str], plain: list[Any], groups: list[GroupStats]
) -> Figures:
    """The pipeline's answers, in the order _read_plain asked, as Figures."""
    answers = iter(plain)
    dead = {
        group: sum(int(next(answers)) for _ in range(topology.partitions))
        for group in topology.groups
    }
    in_doubt = sum(int(next(answers)) for _ in range(topology.partitions))
    paused = bool(next(answers))
    mirrors = {text(field): text(value) for field, value in next(answers).items()}
    extents = {key: (_first_id(next(answers)), _first_id(next(answers))) for key in keys}
    memory_used, maxmemory = next(answers)
    projections, lags = _projection_lags(topology, mirrors, extents)
    return Figures(
        groups=groups,
        dead_letters=dead,
        in_doubt=in_doubt,
        paused=paused,
        memory_used=memory_used,
        maxmemory=maxmemory,
        projections=projections,
        projection_lags=lags,
    )


def _projection_lags(
    topology: Topology, mirrors: dict[str, str], extents: dict[str, tuple[str, str]]
) -> tuple[dict[str, bool], list[ProjectionLag]]:
    """Which projections ever ran, and each mirrored checkpoint's lag behind its stream.

    Expected are those trimming waits for; any other projection shows once it has mirrored.
    Fields `replay:<projection>:<key>` are a replay's pins, not checkpoints."""
    started = dict.fromkeys(topology.trimming.projections, False)
    lags = []
    for field, checkpoint in mirrors.items():
        projection, _, key = field.partition(":")
        if projection == "replay" or key not in extents:
            continue
        started[projection] = True
        first, last = extents[key]
        lags.append(
            ProjectionLag(projection=projection, key=key, seconds=_lag_s(checkpoint, first, last))
        )
    return started, lags


def _lag_s(checkpoint: str, first: str, last: str) -> float:
    """Seconds from the checkpoint's entry to the stream's last; 0 when caught up. Before any
    entry was applied (0-0, or a checkpoint trimmed away) it counts from the first entry."""
    if not last or _order(checkpoint) >= _order(last):
        return 0.0
    since = max(_order(checkpoint), _order(first))[0]
    return (_order(last)[0] - since) / 1000


def _first_id(entries: list[Any]) -> str:
    return text(entries[0][0]) if entries else ""


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)
