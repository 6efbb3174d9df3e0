"""A read model rebuilt from the whole log exactly as `zapstream replay` does it
(projections/replay.py): a fresh copy beside the live model (sessions: the schema
`zapstream_rebuild`, bulk mode; analytics: `<file>.rebuild`, no snapshots), the whole log
followed into it, then promoted (sessions: derived columns computed once and the schemas
swapped; analytics: the file renamed over the live one). Timed from the first read to the
end of the promotion.

DuckDB's memory_limit and threads are those replay gives its copy (analytics.py's defaults),
printed in the table.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from projections.analytics import AnalyticsTarget
from projections.replay import replay
from replay_bench.job import Job, Timed
from replay_bench.memory import rss_mb
from zapstream.settings import Settings
from zapstream.topology import Topology


def describe(job: Job) -> str:
    if job.what == "sessions":
        database = job.database_url.rsplit("/", 1)[-1]
        return f"replay into schema zapstream_rebuild of {database} (bulk), then promote"
    config = AnalyticsTarget(f"{job.duckdb_path}.rebuild", rebuild=True).config
    return (
        f"replay into a new file (DuckDB memory_limit {config['memory_limit']}, "
        f"threads {config['threads']}), then promote"
    )


async def rebuild(redis: Redis, topology: Topology, job: Job) -> Timed:
    """Replay the whole log into the job's projection; the entries applied and the seconds."""
    settings = Settings(
        redis_url=job.redis_url, database_url=job.database_url, duckdb_path=job.duckdb_path
    )
    rss_start = rss_mb()
    started = time.perf_counter()
    applied = await replay(redis, topology, settings, job.what, progress=True)
    seconds = time.perf_counter() - started
    return Timed(events=applied, seconds=seconds, rss_start_mb=rss_start, settings=describe(job))
