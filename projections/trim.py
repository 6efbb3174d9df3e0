"""Trimming: keep Redis bounded without losing an entry anyone still needs.

Per stream key with a `retention` in streams.yaml, retention asks for a point (XTRIM MINID:
entries before it go): the newest `max_len` entries and those newer than `max_age` stay. The
point applied is the oldest of that and what is still needed:

- every consumer group on the key: the entry after its last-delivered id, and its oldest
  pending entry (a group declared in streams.yaml but not created yet pins at the start);
- every projection of `trimming.projections`: the entry after its checkpoint, as mirrored in
  the hash `<prefix>:projections` by its follower (one that never mirrored pins at the start),
  the archive among them, so nothing leaves Redis before it is archived;
- a replay in progress (`replay:<projection>:<key>` in the same hash).

Trimming is exact (`MINID =`, never `~`), idempotent and safe from several processes at once:
each computes the same minimum and XTRIM never removes more than asked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import redis.exceptions
import structlog
from redis.asyncio import Redis

from zapstream.connections import text
from zapstream.keys import projections_key, stream_keys
from zapstream.metrics import Metrics
from zapstream.topology import Topology

log = structlog.get_logger()

START = "0-0"
REDIS_TIMEOUT_S = 10.0
PINNED_COUNT_MAX = 100_000  # counting the entries a pin keeps stops here


class TrimPlan(msgspec.Struct, kw_only=True):
    stream: str
    key: str
    wanted: str  # the MINID retention asks for ("" when the stream is within its retention)
    needed: str  # the oldest entry id still needed by someone
    pinned_by: str  # who needs it: "group send", "projection sessions", "replay analytics"
    point: str  # the MINID applied: the older of wanted and needed ("": nothing to trim)
    pinned: int  # entries retention would trim that a pin keeps (counted up to 100,000)


async def plan_trim(redis: Redis, topology: Topology, stream: str, key: str) -> TrimPlan:
    """What trimming `key` would do now (nothing is removed)."""
    retention = topology.streams[stream].retention
    async with asyncio.timeout(REDIS_TIMEOUT_S):
        needs = await _needs(redis, topology, stream, key)
        wanted = ""
        if retention is not None:
            points = []
            if retention.max_len is not None:
                kept: Any = await redis.xrevrange(key, count=retention.max_len)
                if len(kept) == retention.max_len:
                    points.append(text(kept[-1][0]))
            if retention.max_age is not None:
                seconds, micros = await redis.time()
                now_ms = seconds * 1000 + micros // 1000
                points.append(f"{max(now_ms - int(retention.max_age * 1000), 0)}-0")
            if points:
                wanted = max(points, key=_order)
        needed, pinned_by = min(needs, key=lambda need: _order(need[0]))
        point = min(wanted, needed, key=_order) if wanted else ""
        pinned = 0
        if wanted and _order(needed) < _order(wanted):
            held: Any = await redis.xrange(key, needed, f"({wanted}", count=PINNED_COUNT_MAX)
            pinned = len(held)
    return TrimPlan(
        stream=stream,
        key=key,
        wanted=wanted,
        needed=needed,
        pinned_by=pinned_by if pinned else "",
        point=point,
        pinned=pinned,
    )


async def trim(redis: Redis, topology: Topology, metrics: Metrics | None = None) -> list[TrimPlan]:
    """Trim every stream that has a retention, each to its safe point; the plans applied."""
    plans = []
    for stream, spec in topology.streams.items():
        if spec.retention is None:
            continue
        for key in stream_keys(topology, stream):
            plan = await plan_trim(redis, topology, stream, key)
            removed = 0
            if plan.point:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    # Exact (`=`): the point is exactly what is safe and wanted.
                    removed = int(await redis.xtrim(key, minid=plan.point, approximate=False))
            if removed:
                log.info("stream_trimmed", key=key, removed=removed, point=plan.point)
            if plan.pinned:
                log.info("trim_pinned", key=key, by=plan.pinned_by, entries=plan.pinned)
            if metrics is not None:
                metrics.trim_pinned.labels(stream_key=key).set(plan.pinned)
                metrics.trimmed.labels(stream_key=key).inc(removed)
            plans.append(plan)
    return plans


class Trimmer:
    """Trims every `trimming.every` until stop(); a Redis failure waits for the next round."""

    def __init__(self, redis: Redis, topology: Topology, metrics: Metrics | None = None) -> None:
        self.redis = redis
        self.topology = topology
        self.metrics = metrics
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await trim(self.redis, self.topology, self.metrics)
            except (redis.exceptions.ConnectionError, TimeoutError) as err:
                log.warning("trim_failed", error=f"{type(err).__name__}: {err}")
            try:
                async with asyncio.timeout(self.topology.trimming.every):
                    await self._stopping.wait()
            except TimeoutError:
                pass


async def _needs(redis: Redis, topology: Topology, stream: str, key: str) -> list[tuple[str, str]]:
    """(the oldest entry id needed, by whom) for everyone who reads `key`."""
    needs: list[tuple[str, str]] = []
    groups: dict[str, Any] = {}
    if await redis.exists(key):
        groups = {text(g["name"]): g for g in await redis.xinfo_groups(key)}
    declared = [name for name, spec in topology.groups.items() if stream in spec.streams]
    for name in declared:
        if name not in groups:
            needs.append((START, f"group {name} (not created)"))
    for name, group in groups.items():
        needs.append((_after(text(group["last-delivered-id"])), f"group {name}"))
        if int(group.get("pending", 0)):
            summary: dict[str, Any] = await redis.xpending(key, name)
            if summary.get("min"):
                needs.append((text(summary["min"]), f"group {name} (pending)"))
    mirrors = {
        text(field): text(value)
        for field, value in (await redis.hgetall(projections_key(topology))).items()
    }
    for name in topology.trimming.projections:
        position = mirrors.get(f"{name}:{key}")
        needs.append((_after(position) if position else START, f"projection {name}"))
    for field, position in mirrors.items():
        if field.startswith("replay:") and field.endswith(f":{key}"):
            needs.append((_after(position), f"replay {field.split(':')[1]}"))
    return needs or [(_after("0-0"), "")]


def _after(entry_id: str) -> str:
    ms, seq = _order(entry_id)
    return f"{ms}-{seq + 1}"


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
