"""bench/replay's options: what one run measures and where, parsed once and passed down."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ingest_bench.options import REPO
from projections.follower import BATCH

PROJECTIONS = ("sessions", "analytics")
EVENTS, QUICK_EVENTS = 1_000_000, 100_000
REDIS_URL = "redis://127.0.0.1:6379/8"  # the bench's own database
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # where DATABASE is made from
DATABASE = "zapstream_bench_replay"
KEEP_LOG = "leave the log in Redis at the end; reuse one so left (same seed and size)"
DESCRIPTION = "Events per second rebuilding each read model from the log, beside XRANGE alone."


class Options(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str  # the bench's own database: flushed before the log is written, and at the end
    postgres_url: str  # a database on the server to create and drop the bench's database from
    database: str  # the bench's PostgreSQL database: created afresh, dropped at the end
    config: Path  # streams.yaml: the topology the log is written and followed with
    events: int  # events in the log
    seed: int  # the history generator's seed: the same seed gives the same log
    batch: int  # the followers' batch (XREAD COUNT per stream, entries per transaction)
    memory_limit: str  # DuckDB's memory_limit for the analytics target
    threads: int  # and its threads
    projections: tuple[str, ...]  # the projections measured, in order
    keep_log: bool  # leave the log in Redis, and reuse it when the next run asks for the same


def count(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="bench/replay", description=DESCRIPTION)
    parser.add_argument("--events", type=count, help=f"events in the log (default {EVENTS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"flushed (default {REDIS_URL})")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help=f"default {POSTGRES_URL}")
    parser.add_argument("--database", default=DATABASE, help="created afresh, dropped at the end")
    parser.add_argument("--config", type=Path, default=REPO / "streams.yaml", help="streams.yaml")
    parser.add_argument("--seed", type=int, default=7, help="the history's seed (default 7)")
    parser.add_argument(
        "--batch",
        type=count,
        default=BATCH,
        help=f"the followers' batch (default {BATCH:,}, theirs)",
    )
    parser.add_argument("--memory-limit", default="256MB", help="DuckDB's memory_limit (256MB)")
    parser.add_argument("--threads", type=count, default=2, help="DuckDB's threads (default 2)")
    parser.add_argument("--projections", nargs="+", choices=PROJECTIONS, default=PROJECTIONS)
    parser.add_argument("--keep-log", action="store_true", help=KEEP_LOG)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else EVENTS
    del args.quick
    args.projections = tuple(args.projections)
    return Options(**vars(args))
