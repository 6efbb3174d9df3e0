"""Options: what one bench/process run measures and where, parsed once and passed down."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ingest_bench.options import REPO


class Options(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str  # the bench's own database: it is flushed before every run
    config: Path  # streams.yaml: the topology the bench's group is added to
    runs: int  # runs per consumer; the median is reported
    events: int  # entries drained by zapstream and by the bare loop, per run
    celery_events: int  # tasks run by the Celery worker, per run
    concurrency: int  # the zapstream group's concurrency
    batch: int  # the zapstream group's batch, and the bare loop's XREADGROUP COUNT


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/process",
        description="Events per second through a consumer group, beside Celery and bare Redis.",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/8",
        help="the bench's own Redis database, flushed before every run (default: db 8)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO / "streams.yaml",
        help="streams.yaml the bench group is added to (default: the repository's)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per consumer (default 3)")
    parser.add_argument(
        "--events",
        type=int,
        default=50_000,
        help="entries per zapstream and bare run (default 50,000)",
    )
    parser.add_argument(
        "--celery-events",
        type=int,
        default=10_000,
        help="tasks per Celery run: fewer, Celery is slow (default 10,000)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="the zapstream group's concurrency (default 16)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="the zapstream group's batch and the bare XREADGROUP COUNT (default 100)",
    )
    args = parser.parse_args(argv)
    for name in ("runs", "events", "celery_events", "concurrency", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return Options(**{name.replace("-", "_"): value for name, value in vars(args).items()})
