"""Options: what one bench/e2e run measures and where, parsed once and passed down."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ingest_bench.options import REPO

# option, its default, its default with --quick
QUICK_DEFAULTS = (
    ("duration", 30.0, 5.0),
    ("step_duration", 10.0, 3.0),
    ("max_rate", 12_800.0, 400.0),
)


class Options(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str  # the bench's own database: flushed before every run
    config: Path  # the repository's streams.yaml, the base of the bench's topology
    secret: str  # the app secret the webhooks are signed with
    rate: float  # conversations/s of the main run
    duration: float  # seconds of the main run
    first_rate: float  # the first step's rate; each next step doubles it
    max_rate: float  # no step above this rate
    step_duration: float  # seconds per step
    drain: float  # seconds a run waits, after its last POST, for the missing replies
    numbers: int  # business numbers (phone_number_id) the conversations are spread over
    work_processes: int  # `zapstream work` processes (every group each)
    celery_pool: str  # the Celery worker's pool
    celery_concurrency: int  # and its concurrency
    quick: bool  # a smoke run: short runs and steps


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/e2e",
        description="Webhook-to-reply latency of zapstream beside the FastAPI + Celery design.",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="the bench's own Redis database, flushed before every run (default: db 9)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO / "streams.yaml",
        help="the streams.yaml the bench's topology starts from (default: the repository's)",
    )
    parser.add_argument("--secret", default="bench-e2e-app-secret", help="app secret")
    parser.add_argument(
        "--rate", type=float, default=100, help="conversations/s of the main run (default 100)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of the main run (default 30; --quick: 5)"
    )
    parser.add_argument(
        "--first-rate", type=float, default=100, help="the first step's rate (default 100)"
    )
    parser.add_argument(
        "--max-rate", type=float, help="no step above this rate (default 12,800; --quick: 400)"
    )
    parser.add_argument(
        "--step-duration", type=float, help="seconds per step (default 10; --quick: 3)"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=5,
        help="seconds to wait for missing replies after the last POST (default 5)",
    )
    parser.add_argument(
        "--numbers", type=int, default=8, help="business numbers to spread over (default 8)"
    )
    parser.add_argument(
        "--work-processes",
        type=int,
        default=2,
        help="`zapstream work` processes (default 2, as the Celery pool's concurrency)",
    )
    parser.add_argument(
        "--celery-pool",
        default="prefork",
        choices=("prefork", "threads", "solo"),
        help="the Celery worker's pool (default prefork, Celery's own default)",
    )
    parser.add_argument(
        "--celery-concurrency",
        type=int,
        default=2,
        help="the Celery worker's concurrency (default 2: Celery's default, one per CPU here)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 5 s main run, 3 s steps, up to 400/s (unless given)",
    )
    args = parser.parse_args(argv)
    for name, full, quick in QUICK_DEFAULTS:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in (
        "rate",
        "duration",
        "first_rate",
        "max_rate",
        "step_duration",
        "numbers",
        "work_processes",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    return Options(**vars(args))
