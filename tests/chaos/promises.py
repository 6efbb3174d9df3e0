"""What the chaos run checks once everything is quiet, read from the log, Redis, the Graph
stand-in and the read models: one row per promise, printed as a table and then asserted.

    await eventually(lambda: quiet(...))  # still_moving() says what the run waits for
    rows = [Row(...), model_row(...)]; print(render(rows)); assert all(r.ok for r in rows)
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tests import outcomes
from zapstream.keys import doubt_key, due_key, failures_key, projections_key, stream_key
from zapstream.tables import table
from zapstream.topology import Topology

FOLLOWED = ("sessions", "analytics")  # the read models `project` follows in the run
MESSAGES = "zapstream:{p0}:messages"
STATUSES = "zapstream:{p0}:statuses"
Models = dict[str, list[tuple[Any, ...]]]


@dataclass(frozen=True)
class Row:
    promise: str
    expected: str
    found: str
    ok: bool


def render(rows: list[Row]) -> str:
    cells = [["promise", "expected", "found", "holds"]]
    cells += [[r.promise, r.expected, r.found, "yes" if r.ok else "NO"] for r in rows]
    return table(cells)


async def logged_messages(redis: Redis) -> collections.Counter[str]:
    """wamid -> entries of it in the messages stream (received or rejected)."""
    found: collections.Counter[str] = collections.Counter()
    for _, fields in await redis.xrange(MESSAGES):
        found[fields[b"message_id"].decode()] += 1
    return found


async def logged_statuses(redis: Redis) -> set[str]:
    """The outbound wamids with a `sent` status in the log."""
    found = set()
    for _, fields in await redis.xrange(STATUSES):
        if fields[b"status"] == b"sent":
            found.add(fields[b"message_id"].decode())
    return found


async def pending(redis: Redis, topology: Topology) -> dict[str, int]:
    """group/stream -> entries pending, read or not yet read (XPENDING, and what follows the
    group's last-delivered id), and failures recorded but not settled."""
    found = {}
    for group, spec in topology.groups.items():
        for stream in spec.streams:
            key = stream_key(topology, stream, 0)
            summary = await redis.xpending(key, group)
            unread = 0
            for info in await redis.xinfo_groups(key):
                if info["name"].decode() == group:
                    after = info["last-delivered-id"].decode()
                    unread = len(await redis.xrange(key, min=f"({after}", max="+"))
            failing = await redis.hlen(failures_key(topology, group, 0))
            found[f"{group}/{stream}"] = int(summary["pending"]) + unread + int(failing)
    return found


async def behind(redis: Redis, topology: Topology) -> dict[str, str]:
    """projection/stream -> its mirrored checkpoint, where it is not at the stream's end."""
    mirror = await redis.hgetall(projections_key(topology))
    found = {}
    for stream in topology.streams:
        key = stream_key(topology, stream, 0)
        last = await redis.xrevrange(key, count=1)
        end = last[0][0].decode() if last else "0-0"
        for name in FOLLOWED:
            at = mirror.get(f"{name}:{key}".encode(), b"").decode()
            if at != end:
                found[f"{name}/{stream}"] = f"{at or 'none'} of {end}"
    return found


async def still_moving(
    redis: Redis,
    topology: Topology,
    wamids: set[str],
    customers: int,
    accepted: set[str],
) -> list[str]:
    """What the run still waits for; [] once it is quiet: every message in the log, every
    turn ended, the `sent` status of every accepted reply logged, nothing pending or unread
    in any group, no debounce window open, no part in doubt but the designed end, both read
    models at the streams' ends."""
    waiting = []
    missing = wamids - set(await logged_messages(redis))
    if missing:
        waiting.append(f"{len(missing)} messages not in the log")
    if await outcomes.all_ended(redis, customers) is None:
        waiting.append("turns without an end")
    unreported = accepted - await logged_statuses(redis)
    if unreported:
        waiting.append(f"{len(unreported)} `sent` statuses not in the log")
    busy = {name: n for name, n in (await pending(redis, topology)).items() if n}
    if busy:
        waiting.append(f"pending {busy}")
    if await redis.zcard(due_key(topology, 0)):
        waiting.append("debounce windows open")
    designed = set(outcomes.lost(await outcomes.dead_replies(redis)).values())
    doubt = {part.decode() for part in await redis.zrange(doubt_key(topology, 0), 0, -1)}
    if doubt - designed:
        waiting.append(f"{len(doubt - designed)} parts in doubt")
    lagging = await behind(redis, topology)
    if lagging:
        waiting.append(f"projections behind {lagging}")
    return waiting


def model_row(name: str, live: Models, replayed: Models) -> Row:
    """The live model against a fresh replay, table by table, row by row."""
    rows = sum(len(r) for r in live.values())
    differ = [
        f"{table_name} ({len(live.get(table_name, []))} vs {len(replayed.get(table_name, []))})"
        for table_name in sorted(set(live) | set(replayed))
        if live.get(table_name) != replayed.get(table_name)
    ]
    found = f"{rows} rows in {len(live)} tables, " + (
        "differs in " + ", ".join(differ) if differ else "equal"
    )
    return Row(f"{name} model == fresh `zapstream replay`", "equal row by row", found, not differ)


def first_difference(live: Models, replayed: Models) -> str:
    """The first row that differs, for the failure message."""
    for table_name in sorted(set(live) | set(replayed)):
        a, b = live.get(table_name, []), replayed.get(table_name, [])
        if a != b:
            only_live = [row for row in a if row not in b][:2]
            only_replayed = [row for row in b if row not in a][:2]
            return f"{table_name}: live only {only_live}; replayed only {only_replayed}"
    return ""


def doubles(parts: Iterable[str]) -> dict[str, int]:
    counted = collections.Counter(parts)
    return {part: n for part, n in counted.items() if n > 1}
