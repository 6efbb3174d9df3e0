"""A read model rebuilt from the whole log: a fresh target, `Follower(...).catch_up()` timed,
as a replay does it (projections/replay.py) but into the target itself, with no promotion.

sessions: the schema `zapstream` in the bench's database, which bench/replay has just created
afresh (SessionsTarget.drop() is for a replay's copy only); analytics: a new DuckDB file, its
memory_limit and threads set explicitly.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from projections.analytics import AnalyticsTarget
from projections.follower import Follower
from projections.replay import ProgressBar
from projections.sessions import SessionsTarget
from replay_bench.job import Job, Timed
from replay_bench.memory import rss_mb
from replay_bench.streams import entry_counts
from zapstream.topology import Topology

SCHEMA = "zapstream"


def fresh_target(job: Job) -> tuple[SessionsTarget | AnalyticsTarget, str]:
    """The job's target, and its settings as the table shows them."""
    if job.what == "sessions":
        database = job.database_url.rsplit("/", 1)[-1]
        return SessionsTarget(job.database_url, schema=SCHEMA), f"schema {SCHEMA} in {database}"
    settings = f"DuckDB memory_limit {job.memory_limit}, threads {job.threads}"
    target = AnalyticsTarget(job.duckdb_path, memory_limit=job.memory_limit, threads=job.threads)
    return target, settings


async def rebuild(redis: Redis, topology: Topology, job: Job) -> Timed:
    """Apply the whole log to a fresh target; the entries applied and the seconds catch_up took."""
    target, settings = fresh_target(job)
    await target.start()
    try:
        follower = Follower(redis, topology, target, batch=job.batch, mirror=False)  # as replay
        total = sum((await entry_counts(redis, follower.stream_of)).values())
        bar = ProgressBar(job.what, total)
        rss_start = rss_mb()
        started = time.perf_counter()
        applied = await follower.catch_up(progress=bar)
        seconds = time.perf_counter() - started
        bar.finish()
    finally:
        await target.close()
    if applied != total:
        raise RuntimeError(f"{job.what}: {applied:,} entries applied of {total:,}")
    return Timed(
        events=applied,
        seconds=seconds,
        rss_start_mb=rss_start,
        settings=f"{settings}, batch {job.batch:,}",
    )
