"""`zapstream inspect`: what an operator asks at 3 a.m., read the way redis-cli would.

Every figure comes from the commands README's "Inspecting with redis-cli" lists, so the two
always agree: XINFO STREAM (length, first and last entry), XINFO GROUPS (pending, lag,
last-delivered id), XINFO CONSUMERS (idle), XPENDING (oldest pending entry, deliveries), the
heartbeat keys (liveness), the dead-letter streams, and zapstream's own keys beside the
streams (replies in doubt, held sessions, paused sending, the trim point, the archive).

Ages are measured against Redis's clock (TIME), the clock that stamped the entry ids.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
from redis.asyncio import Redis

from processors.deadletter import DeadLetter, read_dead_letters
from processors.handoff import held_sessions
from projections.archive import read_checkpoint
from projections.trim import TrimPlan, plan_trim
from zapstream.connections import open_redis, text
from zapstream.groupstats import GroupStats, group_stats
from zapstream.keys import alive_key, doubt_key, partition_of, paused_key, stream_key
from zapstream.settings import Settings
from zapstream.tables import ago, table
from zapstream.topology import Topology

WATCH_EVERY_S = 2.0
REDIS_TIMEOUT_S = 30.0  # one whole inspection; counting a lag Redis cannot give takes time
PENDING_PAGE = 1000


class ConsumerView(msgspec.Struct, kw_only=True):
    name: str
    pending: int
    idle_s: float  # since the consumer last read or claimed (XINFO CONSUMERS idle)
    alive: bool  # its heartbeat key exists: a dead one's entries are taken over


class GroupView(msgspec.Struct, kw_only=True):
    name: str
    last_delivered: str
    lag: int  # entries not yet delivered to the group
    lag_computed: bool  # Redis reported nil (a deletion in the stream): counted by inspect
    pending: int  # delivered, not acked
    oldest_pending: str  # the oldest pending entry id ("" when none)
    oldest_pending_age_s: float | None  # how old that entry is
    redelivered: int  # pending entries delivered more than once
    dead_letters: int
    consumers: list[ConsumerView]


class ArchiveView(msgspec.Struct, kw_only=True):
    first: str  # the first entry id archived ("" when none)
    last: str  # the last entry id archived
    files: int
    bytes: int
    entries: int


class StreamView(msgspec.Struct, kw_only=True):
    stream: str
    key: str
    length: int
    first: str
    first_age_s: float | None
    last: str
    last_age_s: float | None
    groups: list[GroupView]
    trim: TrimPlan | None = None  # for a stream with a retention
    archive: ArchiveView | None = None


class DeadLetterCount(msgspec.Struct, kw_only=True):
    group: str
    code: str
    count: int
    newest_age_s: float


class InDoubt(msgspec.Struct, kw_only=True):
    part: str
    for_s: float


class Inspection(msgspec.Struct, kw_only=True):
    redis_time_ms: int  # when it was read, by Redis's clock
    streams: list[StreamView]
    dead_letters: list[DeadLetterCount]
    in_doubt: list[InDoubt]
    held_sessions: int
    sending_paused: str  # why, while paused; empty otherwise


async def inspect(settings: Settings, topology: Topology, args: argparse.Namespace) -> int:
    """Print one inspection (or one every WATCH_EVERY_S seconds with --watch)."""
    async with open_redis(settings.redis_url) as redis:
        while True:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                found = await read_inspection(redis, topology, settings.archive_dir)
            if args.json:
                print(msgspec.json.encode(found).decode(), flush=True)
            else:
                if args.watch:
                    print("\033[2J\033[H", end="")  # clear the terminal, cursor home
                print(render(found), flush=True)
            if not args.watch:
                return 0
            await asyncio.sleep(WATCH_EVERY_S)


async def read_inspection(
    redis: Redis, topology: Topology, archive_dir: str | None = None
) -> Inspection:
    now_ms = await _now_ms(redis)
    dead = await read_dead_letters(redis, topology)
    dead_by_key: dict[tuple[str, str], int] = {}  # (stream key, group) -> dead letters
    for letter in dead:
        source = stream_key(topology, letter.stream, partition_of(letter.key))
        dead_by_key[source, letter.group] = dead_by_key.get((source, letter.group), 0) + 1
    extents = read_checkpoint(archive_dir).extents if archive_dir else {}
    readers: dict[str, list[str]] = {}  # stream -> the groups that read it
    for name, group_spec in topology.groups.items():
        for stream in group_spec.streams:
            readers.setdefault(stream, []).append(name)

    streams = []
    for stream, spec in topology.streams.items():
        for partition in range(topology.partitions):
            key = stream_key(topology, stream, partition)
            view = await _stream(redis, topology, stream, key, partition, now_ms, readers)
            for group in view.groups:
                group.dead_letters = dead_by_key.get((key, group.name), 0)
            if spec.retention is not None:
                view.trim = await plan_trim(redis, topology, stream, key)
            if key in extents:
                extent = extents[key]
                view.archive = ArchiveView(
                    first=extent.first,
                    last=extent.last,
                    files=extent.files,
                    bytes=extent.bytes,
                    entries=extent.entries,
                )
            streams.append(view)

    paused = await redis.get(paused_key(topology))
    return Inspection(
        redis_time_ms=now_ms,
        streams=streams,
        dead_letters=_count_dead(dead),
        in_doubt=await _in_doubt(redis, topology, now_ms),
        held_sessions=len(await held_sessions(redis, topology)),
        sending_paused=text(paused) if paused else "",
    )


async def _stream(
    redis: Redis,
    topology: Topology,
    stream: str,
    key: str,
    partition: int,
    now_ms: int,
    readers: dict[str, list[str]],
) -> StreamView:
    if not await redis.exists(key):
        return StreamView(
            stream=stream,
            key=key,
            length=0,
            first="",
            first_age_s=None,
            last="",
            last_age_s=None,
            groups=[],
        )
    info: dict[str, Any] = await redis.xinfo_stream(key)
    first = text(info["first-entry"][0]) if info.get("first-entry") else ""
    last = text(info["last-entry"][0]) if info.get("last-entry") else ""
    stats = await group_stats(redis, key, limit=None)
    groups = [
        await _group(redis, topology, key, partition, stats[name], now_ms)
        for name in readers.get(stream, [])
        if name in stats
    ]
    return StreamView(
        stream=stream,
        key=key,
        length=int(info["length"]),
        first=first,
        first_age_s=_age(first, now_ms),
        last=last,
        last_age_s=_age(last, now_ms),
        groups=groups,
    )


async def _group(
    redis: Redis, topology: Topology, key: str, partition: int, stats: GroupStats, now_ms: int
) -> GroupView:
    summary: dict[str, Any] = await redis.xpending(key, stats.group)
    oldest = text(summary["min"]) if summary.get("min") else ""
    consumers = []
    for info in await redis.xinfo_consumers(key, stats.group):
        name = text(info["name"])
        alive = await redis.exists(alive_key(topology, stats.group, name, partition))
        consumers.append(
            ConsumerView(
                name=name,
                pending=int(info["pending"]),
                idle_s=int(info["idle"]) / 1000,
                alive=bool(alive),
            )
        )
    return GroupView(
        name=stats.group,
        last_delivered=stats.last_delivered,
        lag=stats.lag,
        lag_computed=stats.lag_computed,
        pending=stats.pending,
        oldest_pending=oldest,
        oldest_pending_age_s=_age(oldest, now_ms),
        redelivered=await _redelivered(redis, key, stats.group) if stats.pending else 0,
        dead_letters=0,
        consumers=consumers,
    )


async def _redelivered(redis: Redis, key: str, group: str) -> int:
    """Pending entries Redis delivered more than once (XPENDING's per-entry count)."""
    count = 0
    start = "-"
    while True:
        page: list[dict[str, Any]] = await redis.xpending_range(
            key, group, min=start, max="+", count=PENDING_PAGE
        )
        count += sum(1 for item in page if int(item["times_delivered"]) > 1)
        if len(page) < PENDING_PAGE:
            return count
        start = f"({text(page[-1]['message_id'])}"


def _count_dead(dead: Iterable[DeadLetter]) -> list[DeadLetterCount]:
    counts: dict[tuple[str, str], DeadLetterCount] = {}
    for letter in dead:
        found = counts.get((letter.group, letter.code))
        if found is None:
            counts[letter.group, letter.code] = DeadLetterCount(
                group=letter.group, code=letter.code, count=1, newest_age_s=letter.age_s
            )
        else:
            found.count += 1
            found.newest_age_s = min(found.newest_age_s, letter.age_s)
    return sorted(counts.values(), key=lambda c: (c.group, -c.count, c.code))


async def _in_doubt(redis: Redis, topology: Topology, now_ms: int) -> list[InDoubt]:
    found = []
    for partition in range(topology.partitions):
        scored: list[Any] = await redis.zrange(
            doubt_key(topology, partition), 0, -1, withscores=True
        )
        for part, since in scored:
            found.append(InDoubt(part=text(part), for_s=round((now_ms - since) / 1000, 1)))
    return found


async def _now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _age(entry_id: str, now_ms: int) -> float | None:
    if not entry_id:
        return None
    return max(0, now_ms - int(entry_id.split("-", 1)[0])) / 1000


# --- the terminal view ----------------------------------------------------------------------


def render(found: Inspection) -> str:
    sections = [
        _streams_table(found),
        _groups_table(found),
        _consumers_table(found),
        _dead_letters_table(found),
        _retention_table(found),
        _replies_lines(found),
    ]
    return "\n\n".join(section for section in sections if section)


def _streams_table(found: Inspection) -> str:
    rows = [["stream", "length", "first", "age", "last", "age"]]
    for s in found.streams:
        rows.append(
            [
                s.key,
                f"{s.length:,}",
                s.first or "-",
                ago(s.first_age_s),
                s.last or "-",
                ago(s.last_age_s),
            ]
        )
    return table(rows)


def _groups_table(found: Inspection) -> str:
    rows = [
        ["stream", "group", "consumers", "lag", "pending", "oldest pending", "redelivered", "dead"]
    ]
    for s in found.streams:
        for g in s.groups:
            alive = sum(1 for c in g.consumers if c.alive)
            rows.append(
                [
                    s.key,
                    g.name,
                    f"{alive} alive / {len(g.consumers)}",
                    f"{g.lag:,}{'*' if g.lag_computed else ''}",
                    f"{g.pending:,}",
                    ago(g.oldest_pending_age_s),
                    f"{g.redelivered:,}",
                    f"{g.dead_letters:,}",
                ]
            )
    if len(rows) == 1:
        return "no consumer group has read yet"
    note = "\n* counted by inspect: Redis reports no lag after a deletion in the stream"
    return table(rows) + (
        note if any(g.lag_computed for s in found.streams for g in s.groups) else ""
    )


def _consumers_table(found: Inspection) -> str:
    rows = [["consumers of", "group", "consumer", "pending", "idle", "alive"]]
    for s in found.streams:
        for g in s.groups:
            for c in g.consumers:
                rows.append(
                    [
                        s.key,
                        g.name,
                        c.name,
                        str(c.pending),
                        ago(c.idle_s),
                        "yes" if c.alive else "no",
                    ]
                )
    return table(rows) if len(rows) > 1 else ""


def _dead_letters_table(found: Inspection) -> str:
    if not found.dead_letters:
        return "dead letters: none"
    rows = [["dead letters of", "code", "count", "newest"]]
    for d in found.dead_letters:
        rows.append([d.group, d.code, str(d.count), ago(d.newest_age_s)])
    return table(rows) + "\n(`zapstream dlq list` shows each one; `dlq requeue` sends it back)"


def _retention_table(found: Inspection) -> str:
    rows = [["trimming", "trim point", "retention wants", "pinned", "by", "archived", "files"]]
    for s in found.streams:
        plan, archived = s.trim, s.archive
        rows.append(
            [
                s.key,
                (plan.point or "-") if plan else "no retention",
                (plan.wanted or "-") if plan else "",
                f"{plan.pinned:,}" if plan else "",
                (plan.pinned_by or "-") if plan else "",
                f"{archived.first}..{archived.last}" if archived else "-",
                f"{archived.files} ({archived.bytes:,} B)" if archived else "-",
            ]
        )
    return table(rows)


def _replies_lines(found: Inspection) -> str:
    lines = [f"replies in doubt: {len(found.in_doubt)}"]
    lines += [f"  {item.part}  in doubt for {item.for_s:g}s" for item in found.in_doubt]
    lines.append(f"sessions held by a human: {found.held_sessions}")
    lines.append(
        f"sending: paused ({found.sending_paused})" if found.sending_paused else "sending: on"
    )
    return "\n".join(lines)
