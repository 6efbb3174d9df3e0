"""Options: what one bench/ingest run measures and where, parsed once and passed down."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
OUT = BENCH / "out"



class Options(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str  # the bench's own database: it is flushed between steps
    config: Path  # streams.yaml for zapstream
    secret: str  # the app secret the corpus is signed with
    runs: int  # wrk runs per server; the median is reported
    duration: int  # seconds per wrk run
    threads: int  # wrk threads
    connections: int  # wrk connections
    corpus_size: int  # signed requests in the corpus
    append_seconds: float  # seconds of each dedup-append measurement
    append_concurrency: int  # asyncio tasks / redis-benchmark clients
    memory_customers: int  # conversations in the memory measurement
    memory_messages_each: int  # messages per conversation in it


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/ingest", description="The webhook's ingest figures beside their peers.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7",
                        help="the bench's own Redis database, flushed between steps "
                        "(default: db 7)")
    parser.add_argument("--config", type=Path, default=REPO / "streams.yaml",
                        help="streams.yaml for zapstream (default: the repository's)")
    parser.add_argument("--secret", default="bench-ingest-app-secret", help="app secret")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per server (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--corpus-size", type=int, default=400_000,
                        help="signed requests in the corpus, at least what wrk can send in a "
                        "run (default 400,000)")
    parser.add_argument("--append-seconds", type=float, default=5.0,
                        help="seconds of each dedup-append measurement (default 5)")
    parser.add_argument("--append-concurrency", type=int, default=50,
                        help="concurrent appenders: asyncio tasks, redis-benchmark clients")
    parser.add_argument("--memory-customers", type=int, default=2_000)
    parser.add_argument("--memory-messages-each", type=int, default=10)
    args = parser.parse_args(argv)
    return Options(**{name.replace("-", "_"): value for name, value in vars(args).items()})
