"""The chaos schedule, seeded: a worker killed with SIGKILL (and restarted at once) every few
seconds, the test's own Redis killed with SIGKILL once and started again on the same port
and directory (AOF, appendfsync always: nothing acknowledged is lost), and the test's own
PostgreSQL stopped for several seconds (`immediate`: a crash) and started again.

The waits here pace the schedule (they are the workload), and never synchronise a check."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from tests.chaos.stack import Stack
from tests.servers import OwnPostgres, OwnRedis


@dataclass(frozen=True)
class Schedule:
    kills: list[tuple[float, int]]  # (seconds into the run, index of the worker)
    redis_at: float  # when Redis is killed
    redis_down: float  # and for how long it stays down
    pg_at: float
    pg_down: float

    def __str__(self) -> str:
        kills = ", ".join(f"{at:.1f}s:w{index}" for at, index in self.kills)
        return (
            f"SIGKILL {kills}; Redis SIGKILL at {self.redis_at:.1f}s for {self.redis_down:.1f}s; "
            f"PostgreSQL stopped at {self.pg_at:.1f}s for {self.pg_down:.1f}s"
        )


def make_schedule(rng: random.Random, *, span: float, workers: int) -> Schedule:
    """Kills every 2.5 to 5 s over `span` seconds; Redis once in the first half, PostgreSQL
    once in the second, their outages apart."""
    kills = []
    at = rng.uniform(2.0, 4.0)
    while at < span:
        kills.append((round(at, 2), rng.randrange(workers)))
        at += rng.uniform(2.5, 5.0)
    return Schedule(
        kills=kills,
        redis_at=round(rng.uniform(0.2 * span, 0.45 * span), 2),
        redis_down=round(rng.uniform(1.0, 3.0), 2),
        pg_at=round(rng.uniform(0.55 * span, 0.75 * span), 2),
        pg_down=round(rng.uniform(5.0, 10.0), 2),
    )


@dataclass
class Chaos:
    schedule: Schedule
    stack: Stack
    redis: OwnRedis
    pg: OwnPostgres
    started: float  # time.monotonic() the run's clock starts at
    kills: int = 0
    skipped: int = 0  # kills due while Redis was down (a restart then finds no Redis)
    redis_restarts: int = 0
    redis_outage_s: float = 0.0
    pg_outage_s: float = 0.0
    redis_down: bool = False
    log: list[str] = field(default_factory=list)

    async def run(self) -> None:
        await asyncio.gather(self._kills(), self._redis(), self._postgres())

    async def _kills(self) -> None:
        for at, index in self.schedule.kills:
            await self._until(at)
            if self.redis_down:
                self.skipped += 1
                continue
            worker = self.stack.workers[index]
            worker.kill_and_restart()  # SIGKILL, reaped, started again: milliseconds
            self.kills += 1

    async def _redis(self) -> None:
        await self._until(self.schedule.redis_at)
        self.redis_down = True
        down = time.monotonic()
        self.redis.stop()  # SIGKILL
        await asyncio.sleep(self.schedule.redis_down)
        await asyncio.to_thread(self.redis.start)  # same port and directory: the AOF replayed
        self.redis_outage_s = time.monotonic() - down
        self.redis_down = False
        self.redis_restarts += 1
        self._note(f"Redis back after {self.redis_outage_s:.1f}s")

    async def _postgres(self) -> None:
        await self._until(self.schedule.pg_at)
        down = time.monotonic()
        await asyncio.to_thread(self.pg.stop, "immediate")
        await asyncio.sleep(self.schedule.pg_down)
        await asyncio.to_thread(self.pg.start)
        self.pg_outage_s = time.monotonic() - down
        self._note(f"PostgreSQL back after {self.pg_outage_s:.1f}s")

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))

    def _note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f}s  {what}")
