"""Operator commands: `handoff list | release`, `replay` and `report` (`inspect` is in
inspect.py, `dlq` in dlq.py)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from processors.handoff import held_sessions, release
from projections.replay import PROJECTIONS
from projections.replay import replay as rebuild
from projections.report import render as render_report
from projections.report import report as read_report
from zapstream.connections import open_redis
from zapstream.settings import Settings
from zapstream.tables import ago, table
from zapstream.topology import Topology


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
                ago(now - item.since),
            ]
        )
    print(table(rows))
    return 0


def replay_names(args: argparse.Namespace) -> list[str]:
    return list(PROJECTIONS) if args.projection == "all" else [args.projection]


def replay_since(args: argparse.Namespace) -> datetime | None:
    """--since as a time (ValueError when it is none); one without a zone is UTC."""
    if not args.since:
        return None
    since = datetime.fromisoformat(args.since)
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


def confirm_replay(args: argparse.Namespace) -> int | None:
    """Check --since and ask before a replay; an exit status when it must not go on."""
    try:
        since = replay_since(args)
    except ValueError:
        print(f"zapstream: --since: not an ISO 8601 time: {args.since!r}", file=sys.stderr)
        return 2
    if since is not None:
        print(f"rebuilding what the events since {since.isoformat()} touch")
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
            applied = await rebuild(
                redis, topology, settings, name, since=replay_since(args), say=print
            )
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
