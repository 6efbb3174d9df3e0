"""Operator commands: `handoff list | release`, `inspect`, `replay` and `report`.

`inspect` reads what redis-cli would (XINFO STREAM, XINFO GROUPS, XPENDING, XLEN) and adds
what zapstream keeps beside the streams: dead letters, replies in doubt, held sessions,
whether sending is paused, each stream's trim point and what pins it, and the archive's
extent (from ARCHIVE_DIR's checkpoint, when this machine has it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from processors.handoff import held_sessions, release
from projections.archive import read_checkpoint
from projections.replay import PROJECTIONS
from projections.replay import replay as rebuild
from projections.report import render as render_report
from projections.report import report as read_report
from projections.trim import TrimPlan, plan_trim
from zapstream.connections import open_redis
from zapstream.keys import dead_letter_key, doubt_key, paused_key, stream_key
from zapstream.settings import Settings
from zapstream.topology import Topology

WATCH_EVERY_S = 2.0


async def handoff(settings: Settings, topology: Topology, args: argparse.Namespace) -> int:
    async with open_redis(settings.redis_url) as redis:
        if args.action == "release":
            entry_id = await release(redis, topology, args.session_id)
            if entry_id is None:
                print(f"zapstream: session {args.session_id} is not held", file=sys.stderr)
                return 1
            print(f"released {args.session_id} (handoff.released {entry_id})")
            return 0
        held = await held_sessions(redis, topology)
    if args.json:
        print(msgspec.json.encode(held).decode())
        return 0
    if not held:
        print("no session is held by a human")
        return 0
    rows = [["session_id", "customer", "business", "turn", "held for"]]
    now = time.time()
    for item in held:
        rows.append(
            [
                item.session_id,
                item.customer,
                item.phone_number_id,
                item.turn_id,
                _age(now - item.since),
            ]
        )
    print(_table(rows))
    return 0


class GroupView(msgspec.Struct, kw_only=True):
    name: str
    consumers: int
    pending: int
    lag: int | None  # entries not yet delivered (None: Redis cannot tell)
    last_delivered: str
    dead_letters: int


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
    last: str
    groups: list[GroupView]
    trim: TrimPlan | None = None  # for a stream with a retention
    archive: ArchiveView | None = None


class InDoubt(msgspec.Struct, kw_only=True):
    part: str
    for_s: float


class Inspection(msgspec.Struct, kw_only=True):
    streams: list[StreamView]
    in_doubt: list[InDoubt]
    held_sessions: int
    sending_paused: str  # why, while paused; empty otherwise


async def read_inspection(
    redis: Redis, topology: Topology, archive_dir: str | None = None
) -> Inspection:
    streams: list[StreamView] = []
    extents = read_checkpoint(archive_dir).extents if archive_dir else {}
    group_of_stream: dict[str, list[str]] = {}
    for group_name, spec in topology.groups.items():
        for stream in spec.streams:
            group_of_stream.setdefault(stream, []).append(group_name)
    for stream in topology.streams:
        for partition in range(topology.partitions):
            key = stream_key(topology, stream, partition)
            if not await redis.exists(key):
                streams.append(
                    StreamView(stream=stream, key=key, length=0, first="", last="", groups=[])
                )
                continue
            info: dict[str, Any] = await redis.xinfo_stream(key)
            groups: dict[str, Any] = {_text(g["name"]): g for g in await redis.xinfo_groups(key)}
            views = []
            for name in group_of_stream.get(stream, []):
                group = groups.get(name, {})
                dead = dead_letter_key(topology, name, partition)
                views.append(
                    GroupView(
                        name=name,
                        consumers=int(group.get("consumers", 0)),
                        pending=int(group.get("pending", 0)),
                        lag=int(group["lag"]) if group.get("lag") is not None else None,
                        last_delivered=_text(group.get("last-delivered-id", b"")),
                        dead_letters=int(await redis.xlen(dead)) if await redis.exists(dead) else 0,
                    )
                )
            streams.append(
                StreamView(
                    stream=stream,
                    key=key,
                    length=int(info["length"]),
                    first=_text(info["first-entry"][0]) if info.get("first-entry") else "",
                    last=_text(info["last-entry"][0]) if info.get("last-entry") else "",
                    groups=views,
                )
            )
    for view in streams:
        if topology.streams[view.stream].retention is not None:
            view.trim = await plan_trim(redis, topology, view.stream, view.key)
        if view.key in extents:
            extent = extents[view.key]
            view.archive = ArchiveView(
                first=extent.first,
                last=extent.last,
                files=extent.files,
                bytes=extent.bytes,
                entries=extent.entries,
            )
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    in_doubt = []
    for partition in range(topology.partitions):
        scored: list[Any] = await redis.zrange(
            doubt_key(topology, partition), 0, -1, withscores=True
        )
        for part, since in scored:
            in_doubt.append(InDoubt(part=_text(part), for_s=round((now_ms - since) / 1000, 1)))
    paused = await redis.get(paused_key(topology))
    return Inspection(
        streams=streams,
        in_doubt=in_doubt,
        held_sessions=len(await held_sessions(redis, topology)),
        sending_paused=_text(paused) if paused else "",
    )


async def inspect(settings: Settings, topology: Topology, args: argparse.Namespace) -> int:
    async with open_redis(settings.redis_url) as redis:
        while True:
            found = await read_inspection(redis, topology, settings.archive_dir)
            if args.json:
                print(msgspec.json.encode(found).decode(), flush=True)
            else:
                if args.watch:
                    print("\033[2J\033[H", end="")
                print(render(found), flush=True)
            if not args.watch:
                return 0
            await asyncio.sleep(WATCH_EVERY_S)


def render(found: Inspection) -> str:
    rows = [["stream", "length", "first", "last", "group", "consumers", "pending", "lag", "dead"]]
    for stream in found.streams:
        head = [stream.key, str(stream.length), stream.first or "-", stream.last or "-"]
        if not stream.groups:
            rows.append([*head, "-", "", "", "", ""])
        for n, group in enumerate(stream.groups):
            cells = head if n == 0 else ["", "", "", ""]
            rows.append(
                [
                    *cells,
                    group.name,
                    str(group.consumers),
                    str(group.pending),
                    "?" if group.lag is None else str(group.lag),
                    str(group.dead_letters),
                ]
            )
    lines = [_table(rows), ""]
    retention = [["stream", "trim point", "retention wants", "pinned", "by", "archived", "files"]]
    for stream in found.streams:
        plan, archived = stream.trim, stream.archive
        retention.append(
            [
                stream.key,
                (plan.point or "-") if plan else "no retention",
                (plan.wanted or "-") if plan else "",
                str(plan.pinned) if plan else "",
                (plan.pinned_by or "-") if plan else "",
                f"{archived.first}..{archived.last}" if archived else "-",
                f"{archived.files} ({archived.bytes:,} B)" if archived else "-",
            ]
        )
    lines += [_table(retention), ""]
    lines.append(f"replies in doubt: {len(found.in_doubt)}")
    lines += [f"  {item.part}  in doubt for {item.for_s:g}s" for item in found.in_doubt]
    lines.append(f"sessions held by a human: {found.held_sessions}")
    lines.append(
        f"sending: paused ({found.sending_paused})" if found.sending_paused else "sending: on"
    )
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def replay_names(args: argparse.Namespace) -> list[str]:
    return list(PROJECTIONS) if args.projection == "all" else [args.projection]


def confirm_replay(args: argparse.Namespace) -> int | None:
    """Check --since and ask before a replay; an exit status when it must not go on."""
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            print(f"zapstream: --since: not an ISO 8601 time: {args.since!r}", file=sys.stderr)
            return 2
        print(f"rebuilding what the events since {since.isoformat()} touch (a full replay)")
    if args.yes:
        return None
    if not sys.stdin.isatty():
        print("zapstream: replay asks for confirmation: pass --yes", file=sys.stderr)
        return 1
    names = ", ".join(replay_names(args))
    answer = input(f"Rebuild {names} from the log? Reads and live following go on. [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing rebuilt")
        return 1
    return None


async def replay(settings: Settings, topology: Topology, args: argparse.Namespace) -> int:
    async with open_redis(settings.redis_url) as redis:
        for name in replay_names(args):
            started = time.monotonic()
            applied = await rebuild(redis, topology, settings, name)
            seconds = time.monotonic() - started
            print(f"{name}: rebuilt from {applied:,} entries in {seconds:.1f}s and swapped in")
    return 0


def report(settings: Settings, args: argparse.Namespace) -> int:
    snapshot = Path(f"{settings.duckdb_path}.snapshot")
    if not snapshot.exists():
        print(
            f"zapstream: no analytics snapshot at {snapshot} yet: run `zapstream project` "
            "(or `zapstream run`) first",
            file=sys.stderr,
        )
        return 1
    found = read_report(settings.duckdb_path)
    print(msgspec.json.encode(found).decode() if args.json else render_report(found))
    return 0
