"""The followers' progress, read from outside `zapstream run`, as samples of how many backlog
entries each one's checkpoint covers (Backlog.applied).

Every follower mirrors its checkpoint into the Redis hash `zapstream:projections` (field
`<projection>:<stream key>`) after each commit, for trimming; one HGETALL every POLL_S reads
them all. (The models' own checkpoints are no better from outside: sessions' rows in
PostgreSQL say the same, analytics' live DuckDB file is the run's alone and its published
snapshot 5 s old or older.) Between samples the entries applied are interpolated linearly.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time

import msgspec
from redis.asyncio import Redis

from follow_bench.backlog import Backlog
from follow_bench.progress import log_progress
from projections.replay import FOLLOWED

POLL_S = 0.25  # how often the checkpoints are read
PROGRESS_EVERY_S = 5.0  # a progress line this often while a follower is behind
QUERY_TIMEOUT_S = 5.0


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    at: float  # time.time()
    applied: int  # backlog entries the checkpoint covers


class FollowerProgress(msgspec.Struct, kw_only=True):
    """One follower's samples, in time order."""

    name: str
    total: int  # backlog entries it applies to catch up
    samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        if not self.samples or sample.at > self.samples[-1].at:
            self.samples.append(sample)

    @property
    def behind_until(self) -> float | None:
        """When it was last seen behind (None: never)."""
        return next((s.at for s in reversed(self.samples) if s.applied < self.total), None)

    @property
    def caught_up_at(self) -> float | None:
        """When it was first seen with the whole backlog applied (None: not yet)."""
        return next((s.at for s in self.samples if s.applied >= self.total), None)

    def applied_at(self, at: float) -> float:
        """Backlog entries applied at `at`, interpolated between the samples around it."""
        if not self.samples:
            return 0.0
        n = bisect.bisect_right([s.at for s in self.samples], at)
        if n == 0:
            return float(self.samples[0].applied)
        if n == len(self.samples):
            return float(self.samples[-1].applied)
        before, after = self.samples[n - 1], self.samples[n]
        share = (at - before.at) / (after.at - before.at)
        return before.applied + share * (after.applied - before.applied)


class CheckpointWatcher:
    """Samples every follower's checkpoint every POLL_S until stopped."""

    def __init__(self, redis: Redis, mirror: str, backlog: Backlog | None, ready: float) -> None:
        self.redis = redis
        self.mirror = mirror  # the key of the checkpoints' mirror
        self.backlog = backlog
        self.ready = ready  # when the run started following: progress is told from here
        total = backlog.events if backlog else 0
        self.progress = {name: FollowerProgress(name=name, total=total) for name in FOLLOWED}
        self._stop = asyncio.Event()

    def caught_up(self) -> bool:
        if self.backlog is None:
            return True
        return all(p.caught_up_at is not None for p in self.progress.values())

    def stop(self) -> None:
        self._stop.set()

    async def watch(self) -> None:
        """Sample until stop(); a progress line every PROGRESS_EVERY_S while one is behind."""
        told = time.time()
        while not self._stop.is_set():
            await self.poll()
            if time.time() - told >= PROGRESS_EVERY_S and not self.caught_up():
                told = time.time()
                log_progress(self.describe())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):  # the sampling interval, or the stop
                    await self._stop.wait()

    async def poll(self) -> None:
        if self.backlog is None:
            return
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            fields: dict[bytes, bytes] = await self.redis.hgetall(self.mirror)  # type: ignore[assignment]
        at = time.time()
        positions: dict[str, dict[str, str]] = {name: {} for name in FOLLOWED}
        for field, position in fields.items():
            name, _, stream_key = field.decode().partition(":")
            if name in positions:
                positions[name][stream_key] = position.decode()
        for name, found in positions.items():
            if found:  # mirrored at the follower's start, then after each commit
                self.progress[name].add(Sample(at=at, applied=self.backlog.applied(found)))

    async def wait_caught_up(self, deadline: float) -> bool:
        """Whether every follower was seen caught up before `deadline` (a time.time())."""
        while not self.caught_up():
            if time.time() > deadline:
                return False
            await asyncio.sleep(POLL_S)  # the watcher samples meanwhile
        return True

    def describe(self) -> str:
        """`catch-up +12 s: sessions 120,000/300,000, analytics 90,000/300,000 (snapshot)`."""
        parts = []
        for p in self.progress.values():
            applied = p.samples[-1].applied if p.samples else 0
            parts.append(f"{p.name} {applied:,}/{p.total:,}")
        return f"  catch-up +{time.time() - self.ready:.0f} s: " + ", ".join(parts)
