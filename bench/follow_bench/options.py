"""bench/follow's options: what one run measures and where, parsed once and passed down."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ingest_bench.options import REPO
from projections.replay import FOLLOWED

REDIS_URL = "redis://127.0.0.1:6379/6"  # the bench's own database: flushed before each scenario
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # where DATABASE is made from
DATABASE = "zapstream_bench_follow"
# scenario -> the followers of `zapstream run` given a backlog to catch up on (the others
# follow live): none, every one, then each alone
SCENARIOS: dict[str, tuple[str, ...]] = {
    "idle": (),
    "all": FOLLOWED,
    **{name: (name,) for name in FOLLOWED},
}
# The backlog of each busy scenario, sized so that its catch-up outlasts the load (warm-up
# and 20 s) on two shared cores, with room. Measured here under the load: sessions applies
# about 5,000 entries/s (alone or not), analytics about 11,000/s beside the others and
# 20,000/s alone, the archive about 9,000/s beside them and 11,000/s alone.
BACKLOG_EVENTS = {"all": 600_000, "sessions": 300_000, "analytics": 1_000_000, "archive": 600_000}
QUICK_SHARE = 0.2  # --quick: this share of each backlog
DURATION_S, QUICK_DURATION_S = 20.0, 5.0


class Options(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str  # the bench's own database: flushed before every scenario and at the end
    postgres_url: str  # a database on the server to create and drop the bench's database from
    database: str  # the sessions model's database: created afresh per scenario, dropped at the end
    config: Path  # the repository's streams.yaml, the base of the bench's topology
    secret: str  # the app secret the webhooks are signed with
    rate: float  # webhook POSTs/s, open loop
    duration: float  # seconds of load per scenario
    events: int | None  # events in every busy scenario's backlog (None: BACKLOG_EVENTS)
    seed: int  # the history generator's seed
    numbers: int  # business numbers the conversations are spread over
    scenarios: tuple[str, ...]  # the scenarios run, in order
    drain: float  # seconds to wait for the replies after the last POST (a check, not timed)
    catch_up_timeout: float  # seconds from `zapstream run`'s start to wait for the catch-up
    quick: bool  # a smoke run: a short load on a small backlog


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/follow",
        description="The webhook's latency in `zapstream run` while its read models catch up.",
    )
    parser.add_argument(
        "--redis-url", default=REDIS_URL, help=f"flushed before each scenario (default {REDIS_URL})"
    )
    parser.add_argument(
        "--postgres-url", default=POSTGRES_URL, help=f"the server (default {POSTGRES_URL})"
    )
    parser.add_argument(
        "--database", default=DATABASE, help=f"created afresh, dropped at the end ({DATABASE})"
    )
    parser.add_argument("--config", type=Path, default=REPO / "streams.yaml", help="streams.yaml")
    parser.add_argument("--secret", default="bench-follow-app-secret", help="app secret")
    parser.add_argument("--rate", type=float, default=100, help="POSTs/s (default 100)")
    parser.add_argument(
        "--duration", type=float, help="seconds of load per scenario (default 20; --quick: 5)"
    )
    parser.add_argument(
        "--events",
        type=int,
        help="events in every busy scenario's backlog (default: all 600,000, sessions "
        "300,000, analytics 1,000,000, archive 600,000; --quick: a fifth of those)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the history's seed (default 7)")
    parser.add_argument(
        "--numbers", type=int, default=8, help="business numbers to spread over (default 8)"
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="which to run, in order (default: all)",
    )
    parser.add_argument(
        "--drain", type=float, default=5, help="seconds to wait for the replies (default 5)"
    )
    parser.add_argument(
        "--catch-up-timeout",
        type=float,
        default=300,
        help="seconds from `zapstream run`'s start to wait for the catch-up (default 300)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 5 s loads on a fifth of the backlogs"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else DURATION_S
    for name in ("rate", "duration", "events", "numbers", "catch_up_timeout"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    args.scenarios = tuple(dict.fromkeys(args.scenarios))
    return Options(**vars(args))


def backlog_events(options: Options, scenario: str) -> int:
    """Events in the scenario's backlog (0 for one without)."""
    if not SCENARIOS[scenario]:
        return 0
    if options.events is not None:
        return options.events
    share = QUICK_SHARE if options.quick else 1.0
    return round(BACKLOG_EVENTS[scenario] * share)
