"""The log the read models are rebuilt from: the seeded history of tests/projections/history.py,
about 13.7 events a session, cut at the number of events asked for, appended in pipelines of
XADD of `encode_fields(event)` to the streams of the bench's topology. Redis assigns the ids,
so the entries' clock is the time of the append.

A marker beside the streams records the seed and the size, so that a run with --keep-log can
reuse the log a previous one left instead of writing it again.
"""

from __future__ import annotations

import itertools
import random

import msgspec
from redis.asyncio import Redis

from projections.replay import ProgressBar
from replay_bench.progress import log_progress
from replay_bench.streams import entry_counts, log_keys
from tests.projections.history import STREAMS, history, key
from zapstream.envelope import encode_fields
from zapstream.topology import Topology

EVENTS_PER_SESSION = 13  # a little under the history's mean: enough sessions to cut from
APPEND_CHUNK = 5_000  # XADDs per pipeline round trip
MARKER = "bench-replay:log"  # not a stream of the topology: no follower reads it


class LogFigures(msgspec.Struct, frozen=True, kw_only=True):
    events: int
    sessions: int
    seed: int
    by_stream: dict[str, int]
    redis_mb: float  # used_memory of the bench's database with the log in it, server-wide


async def log_lengths(redis: Redis, topology: Topology) -> dict[str, int]:
    """Entries of every stream, summed over its partitions."""
    keys = log_keys(topology)
    lengths = dict.fromkeys(topology.streams, 0)
    for k, count in (await entry_counts(redis, keys)).items():
        lengths[keys[k]] += count
    return lengths


async def redis_mb(redis: Redis) -> float:
    return int((await redis.info("memory"))["used_memory"]) / 2**20


async def reusable_log(
    redis: Redis, topology: Topology, events: int, seed: int
) -> LogFigures | None:
    """The log a previous --keep-log run left, when it has this seed and size."""
    raw = await redis.get(MARKER)
    if raw is None:
        return None
    figures = msgspec.json.decode(raw, type=LogFigures)
    lengths = await log_lengths(redis, topology)
    if (figures.events, figures.seed) != (events, seed) or lengths != figures.by_stream:
        return None
    return msgspec.structs.replace(figures, redis_mb=await redis_mb(redis))


async def write_log(redis: Redis, topology: Topology, events: int, seed: int) -> LogFigures:
    """Flush the bench's database and append the first `events` events of the seeded history."""
    keys = log_keys(topology)
    for stream in set(STREAMS.values()):
        if keys.get(key(stream)) != stream:
            raise RuntimeError(f"{key(stream)} is not a stream key of the bench's topology")
    await redis.flushdb()
    sessions = events // EVENTS_PER_SESSION + 1
    log_progress(f"log: writing {events:,} events of {sessions:,} sessions (seed {seed})")
    bar = ProgressBar("log", events)
    generated = itertools.islice(history(random.Random(seed), sessions), events)
    while chunk := list(itertools.islice(generated, APPEND_CHUNK)):
        pipe = redis.pipeline(transaction=False)
        for event in chunk:
            pipe.xadd(key(STREAMS[type(event)]), encode_fields(event))
        await pipe.execute()
        bar(len(chunk))
    bar.finish()
    lengths = await log_lengths(redis, topology)
    figures = LogFigures(
        events=sum(lengths.values()),
        sessions=sessions,
        seed=seed,
        by_stream=lengths,
        redis_mb=await redis_mb(redis),
    )
    await redis.set(MARKER, msgspec.json.encode(figures))
    return figures
