"""Liveness with real worker processes: takeover after death, never from the living, the
fence, clean stops. Kill moments are seeded; the seed is printed."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from redis.asyncio import Redis

from tests.processors.recording import ATTEMPTS, COMPLETIONS, FENCED, Options, append, topology
from tests.processors.workers import Workers
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
GROUP = "g"
WORK = "zapstream:{p0}:work"


async def consumers(redis: Redis) -> list[dict[str, object]]:
    return list(await redis.xinfo_consumers(WORK, GROUP))


async def all_completed(redis: Redis, ids: list[str]) -> bool:
    return int(await redis.hlen(COMPLETIONS)) == len(ids)


async def nothing_pending(redis: Redis) -> bool:
    return int((await redis.xpending(WORK, GROUP))["pending"]) == 0


async def completion_counts(redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(COMPLETIONS)).items()}


async def test_two_worker_processes_handle_each_entry_once(redis: Redis, workers: Workers) -> None:
    topo = topology({GROUP: {"streams": ["work"], "concurrency": 8, "idle": "2s"}})
    ids = await append(redis, topo, "work", 2000)
    workers.start(topo, Options())
    workers.start(topo, Options())
    await eventually(lambda: all_completed(redis, ids), timeout=60, interval=0.1)
    counts = await completion_counts(redis)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    assert len(await consumers(redis)) == 2  # both took part


async def test_kill_9_with_entries_in_flight_another_takes_them_over(
    redis: Redis, workers: Workers
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    topo = topology({GROUP: {"streams": ["work"], "concurrency": 16, "idle": "1s"}})
    ids = await append(redis, topo, "work", 600)
    options = Options(work_seconds=0.02)
    victim = workers.start(topo, options)
    survivor = workers.start(topo, options)
    # Kill moments: when the group has completed a seeded number of entries.
    for moment in sorted(rng.sample(range(30, 500), 3)):
        await eventually(lambda m=moment: _completed_at_least(redis, m), timeout=30)
        victim.kill()
        victim.wait(timeout=10)
        victim = workers.start(topo, options)
    victim.kill()
    victim.wait(timeout=10)
    await eventually(lambda: all_completed(redis, ids), timeout=60, interval=0.1)
    await eventually(lambda: nothing_pending(redis), timeout=20, interval=0.1)
    counts = await completion_counts(redis)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    attempts = sum(int(v) for v in (await redis.hgetall(ATTEMPTS)).values())
    assert attempts >= len(ids)  # entries in flight at a kill were attempted again
    assert survivor.poll() is None
    # Dead consumers are removed once their entries were taken over.
    await eventually(lambda: _consumer_count_at_most(redis, 1), timeout=20, interval=0.1)


async def _completed_at_least(redis: Redis, count: int) -> bool:
    return int(await redis.hlen(COMPLETIONS)) >= count


async def _consumer_count_at_most(redis: Redis, count: int) -> bool:
    return len(await consumers(redis)) <= count


async def test_a_handler_three_times_the_idle_time_is_not_taken_from_its_live_owner(
    redis: Redis, workers: Workers
) -> None:
    topo = topology(
        {GROUP: {"streams": ["work"], "concurrency": 4, "idle": "1s", "timeout": "30s"}}
    )
    owner = workers.start(topo, Options(work_seconds=3.0))
    await eventually(lambda: _has_consumers(redis, 1), timeout=20)
    (entry_id,) = await append(redis, topo, "work", 1)
    await eventually(lambda: redis.hget(ATTEMPTS, entry_id), timeout=10)
    other = workers.start(topo, Options())  # idle and hungry: it must not take the entry
    await eventually(lambda: redis.hget(COMPLETIONS, entry_id), timeout=20, interval=0.1)
    assert int(await redis.hget(ATTEMPTS, entry_id)) == 1
    assert int(await redis.hget(COMPLETIONS, entry_id)) == 1
    assert owner.poll() is None and other.poll() is None


async def _has_consumers(redis: Redis, count: int) -> bool:
    """`count` workers are up: their heartbeats exist (Redis lists a consumer only once it
    has read something)."""
    alive = [key async for key in redis.scan_iter(match="zapstream:{p0}:alive:g:*")]
    return len(alive) >= count


async def test_a_paused_worker_whose_entries_were_taken_over_changes_nothing(
    redis: Redis, workers: Workers
) -> None:
    topo = topology({GROUP: {"streams": ["work"], "concurrency": 8, "idle": "1s"}})
    sleeper = workers.start(topo, Options(work_seconds=1.5))
    await eventually(lambda: _has_consumers(redis, 1), timeout=20)
    ids = await append(redis, topo, "work", 8)
    await eventually(lambda: _attempted(redis, ids), timeout=10)
    os.kill(sleeper.pid, signal.SIGSTOP)
    try:
        taker = workers.start(topo, Options())
        await eventually(lambda: all_completed(redis, ids), timeout=30, interval=0.1)
    finally:
        os.kill(sleeper.pid, signal.SIGCONT)
    # The woken worker finishes its handlers: every completion and ack it tries is fenced.
    await eventually(lambda: _fenced_count(redis, len(ids)), timeout=20, interval=0.1)
    counts = await completion_counts(redis)
    assert set(counts.values()) == {1} and set(counts) == set(ids)
    assert await nothing_pending(redis)
    assert sleeper.poll() is None and taker.poll() is None


async def _attempted(redis: Redis, ids: list[str]) -> bool:
    return int(await redis.hlen(ATTEMPTS)) == len(ids)


async def _fenced_count(redis: Redis, count: int) -> bool:
    return int(await redis.hlen(FENCED)) == count


async def test_sigterm_with_100_in_flight_exits_0_and_another_finishes_the_rest(
    redis: Redis, workers: Workers
) -> None:
    topo = topology(
        {
            GROUP: {
                "streams": ["work"],
                "concurrency": 100,
                "batch": 100,
                "idle": "2s",
                "grace": "10s",
            }
        }
    )
    ids = await append(redis, topo, "work", 300)
    first = workers.start(topo, Options(work_seconds=0.5))
    await eventually(lambda: _attempts_at_least(redis, 100), timeout=20)
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    assert time.monotonic() - started < 10  # within the grace period
    finished_by_first = int(await redis.hlen(COMPLETIONS))
    assert finished_by_first >= 100  # its in-flight work was finished, not dropped
    workers.start(topo, Options())
    await eventually(lambda: all_completed(redis, ids), timeout=30, interval=0.1)
    counts = await completion_counts(redis)
    assert set(counts.values()) == {1}
    await eventually(lambda: nothing_pending(redis), timeout=10)


async def _attempts_at_least(redis: Redis, count: int) -> bool:
    return int(await redis.hlen(ATTEMPTS)) >= count


async def test_a_second_signal_exits_at_once(redis: Redis, workers: Workers) -> None:
    topo = topology({GROUP: {"streams": ["work"], "concurrency": 4, "grace": "60s"}})
    await append(redis, topo, "work", 4)
    process = workers.start(topo, Options(work_seconds=30))
    await eventually(lambda: _attempts_at_least(redis, 4), timeout=20)
    process.send_signal(signal.SIGTERM)
    # Signals do not queue: send the second once the first was seen.
    await eventually(lambda: '"event": "stopping"' in workers.log(process), timeout=10)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 1
    assert int((await redis.xpending(WORK, GROUP))["pending"]) == 4  # left for others


async def test_deleted_entries_leave_the_pending_list_on_takeover(
    redis: Redis, workers: Workers
) -> None:
    topo = topology({GROUP: {"streams": ["work"], "concurrency": 10, "idle": "1s"}})
    first = workers.start(topo, Options(work_seconds=30))
    await eventually(lambda: _has_consumers(redis, 1), timeout=20)
    ids = await append(redis, topo, "work", 10)
    await eventually(lambda: _attempted(redis, ids), timeout=10)
    first.kill()
    first.wait(timeout=10)
    await redis.xdel(WORK, *ids[:4])
    workers.start(topo, Options())
    await eventually(lambda: nothing_pending(redis), timeout=20, interval=0.1)
    assert set(await completion_counts(redis)) == set(ids[4:])
