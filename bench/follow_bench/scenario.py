"""One scenario: the log prepared (empty, or a backlog some followers must catch up on), the
stand-in and `zapstream run` started, warmed up, loaded open-loop with signed webhook POSTs of
new conversations, the replies checked, the catch-up awaited, everything stopped.

A POST's latency is its answer's arrival minus the write of its bytes (the webhook's answer
time, not the reply's). The load window is the open-loop run of POSTs; the CPU each process
used is read over it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # no stubs in the dev extra yet
import httpx
import msgspec
import redis

from e2e_bench.cpu import CpuMeter
from e2e_bench.measure import (
    SEND_LAG_WARNING_MS,
    WARM_UP,
    WARM_UP_FIRST,
    WARM_UP_RATE,
    WARM_UP_TIMEOUT_S,
    first_replies,
    wait_for_replies,
)
from e2e_bench.percentiles import percentile
from e2e_bench.traffic import Post, build_conversations, send_open_loop
from follow_bench.backlog import Backlog, skip_backlog, write_backlog
from follow_bench.checkpoints import CheckpointWatcher
from follow_bench.options import SCENARIOS, Options, backlog_events
from follow_bench.processes import Running, environment, running_processes
from follow_bench.progress import log_progress
from ingest_bench import benchdb
from process_bench.loop import run_like_work
from projections.replay import FOLLOWED, live_target
from replay_bench.database import recreate_database
from zapstream.connections import open_redis
from zapstream.keys import projections_key
from zapstream.settings import load_settings
from zapstream.topology import load_topology

CONNECT_TIMEOUT_S = 10.0


class ScenarioResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    catching_up: tuple[str, ...]  # followers that had the backlog to catch up on
    rate: float  # POSTs/s asked for
    window: tuple[float, float]  # the load's start and end, in seconds from the run's start
    sent: int  # POSTs answered 200
    errors: int  # POSTs answered otherwise, or not at all
    error_statuses: dict[int, int]  # HTTP status -> POSTs (0: no answer)
    p50_ms: float  # POST latency of the 200s
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float  # how late the generator wrote the POSTs against the schedule
    replied: int  # conversations whose reply reached the stand-in within the drain
    cpu: dict[str, float]  # percent of one core during the load, by process
    backlog_events: int  # 0: an empty log
    backlog_write_s: float
    applied: dict[str, float]  # follower -> backlog entries applied during the load window
    # follower -> when it was last seen behind and first seen caught up, in seconds from the
    # run's start (None: never behind / not caught up before the timeout)
    catch_up: dict[str, tuple[float | None, float | None]]

    @property
    def window_s(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def covered(self) -> bool:
        """Whether every follower with a backlog was still behind when the load ended."""
        return all(
            (behind := self.catch_up[name][0]) is not None and behind >= self.window[1]
            for name in self.catching_up
        )

    @property
    def applied_per_s(self) -> float:
        """Backlog entries applied per second of the load, by the followers together."""
        return sum(self.applied.values()) / self.window_s if self.window_s else math.nan


class Drive(msgspec.Struct, frozen=True, kw_only=True):
    """What one load recorded."""

    posts: list[Post]
    began: float  # time.time() at the load's start
    ended: float  # and at its end
    cpu: dict[str, float]
    replied: int
    watcher: CheckpointWatcher


async def prepare_backlog(
    options: Options, config: Path, env: dict[str, str], scenario: str
) -> Backlog:
    """Append the backlog; every projection of the run not catching up starts at its end."""
    events = backlog_events(options, scenario)
    settings, topology = load_settings(env, dotenv=None), load_topology(config)
    log_progress(f"  backlog: appending about {events:,} events of the seeded history")
    backlog = await write_backlog(options.redis_url, topology, events, options.seed)
    log_progress(
        f"  backlog: {backlog.events:,} events of {backlog.sessions:,} sessions in "
        f"{backlog.write_s:.1f} s ({backlog.events / backlog.write_s:,.0f}/s); every consumer "
        "group starts after it"
    )
    for name in FOLLOWED:
        if name not in SCENARIOS[scenario]:
            await skip_backlog(live_target(name, settings, topology), backlog)
            log_progress(f"  {name}: checkpoint put at the backlog's end (follows live only)")
    return backlog


async def session_backends(database_url: str, database: str) -> list[int]:
    """The pids of the PostgreSQL backends the run holds on the bench's database."""
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await connection.close()
    return [row["pid"] for row in rows]


async def drive(
    options: Options,
    running: Running,
    env: dict[str, str],
    backlog: Backlog | None,
    mirror: str,
    client: redis.Redis,
    number: int,
) -> Drive:
    """Warm up, load, check the replies, wait for the catch-up; what was recorded."""
    url, secret, numbers = running.webhook_url, options.secret, options.numbers
    count = max(1, round(options.rate * options.duration))
    warm_ups = build_conversations(url, secret, number, WARM_UP_FIRST, WARM_UP, numbers)
    conversations = build_conversations(url, secret, number, 0, count, numbers)
    async with (
        open_redis(options.redis_url) as watching,
        httpx.AsyncClient(timeout=10) as control,
        asyncio.TaskGroup() as tasks,
    ):
        watcher = CheckpointWatcher(watching, mirror, backlog, running.ready)
        tasks.create_task(watcher.watch())
        try:
            await send_open_loop(url, warm_ups, WARM_UP_RATE)
            customers = {conversation.customer for conversation in warm_ups}
            warm = await wait_for_replies(
                control, running.standin_url, customers, 0, WARM_UP_TIMEOUT_S
            )
            if len(first_replies(warm)) < WARM_UP:
                raise RuntimeError(
                    f"{len(first_replies(warm))} of {WARM_UP} warm-up replies after "
                    f"{WARM_UP_TIMEOUT_S:g} s; see bench/out/follow-*.log"
                )
            pids = {
                "zapstream": [running.run_pid],
                "standin": [running.standin_pid],
                "postgres": await session_backends(env["DATABASE_URL"], options.database),
            }
            meter = CpuMeter(pids, client)
            log_progress(f"  load: {options.rate:g} POSTs/s for {options.duration:g} s")
            meter.start()
            began = time.time()
            posts = await send_open_loop(url, conversations, options.rate)
            ended = time.time()
            cpu = meter.stop()
            customers = {conversation.customer for conversation in conversations}
            arrivals = await wait_for_replies(
                control, running.standin_url, customers, len(warm), options.drain
            )
            if not await watcher.wait_caught_up(running.ready + options.catch_up_timeout):
                log_progress(
                    f"  WARNING not caught up {options.catch_up_timeout:g} s after the start"
                )
        finally:
            watcher.stop()
    replied = sum(1 for to in first_replies(arrivals) if to.removeprefix("+") in customers)
    return Drive(posts=posts, began=began, ended=ended, cpu=cpu, replied=replied, watcher=watcher)


def since(ready: float, at: float | None) -> float | None:
    return None if at is None else at - ready


def since_text(seconds: float | None) -> str:
    """`+12.3 s` from the run's start, or `-` when the moment was not seen."""
    return "-" if seconds is None else f"+{seconds:.1f} s"


def summarise(
    name: str, options: Options, backlog: Backlog | None, running: Running, load: Drive
) -> ScenarioResult:
    ok = [post for post in load.posts if post.status == 200]
    posts_ms = sorted(1000 * (post.answered - post.sent) for post in ok)
    lag_ms = sorted(1000 * (post.sent - post.due) for post in load.posts)
    catching_up = SCENARIOS[name]
    progress = load.watcher.progress
    return ScenarioResult(
        name=name,
        catching_up=catching_up,
        rate=options.rate,
        window=(load.began - running.ready, load.ended - running.ready),
        sent=len(ok),
        errors=len(load.posts) - len(ok),
        error_statuses=dict(Counter(post.status for post in load.posts if post.status != 200)),
        p50_ms=percentile(posts_ms, 0.50),
        p99_ms=percentile(posts_ms, 0.99),
        max_ms=posts_ms[-1] if posts_ms else math.nan,
        send_lag_p99_ms=percentile(lag_ms, 0.99),
        replied=load.replied,
        cpu=load.cpu,
        backlog_events=backlog.events if backlog else 0,
        backlog_write_s=backlog.write_s if backlog else 0.0,
        applied={
            follower: progress[follower].applied_at(load.ended)
            - progress[follower].applied_at(load.began)
            for follower in catching_up
        },
        catch_up={
            follower: (
                since(running.ready, progress[follower].behind_until),
                since(running.ready, progress[follower].caught_up_at),
            )
            for follower in FOLLOWED
        },
    )


def measure_scenario(name: str, options: Options, config: Path, directory: Path) -> ScenarioResult:
    """One scenario from a flushed Redis database and a fresh PostgreSQL database; its result."""
    catching_up = SCENARIOS[name]
    log_progress(
        f"{name}: "
        + (f"{' and '.join(catching_up)} catching up on a backlog" if catching_up else "empty log")
    )
    client = benchdb.connect(options.redis_url)
    benchdb.flush(client)
    run_like_work(recreate_database(options.postgres_url, options.database))
    env = environment(options, directory / name)
    backlog = run_like_work(prepare_backlog(options, config, env, name)) if catching_up else None
    number = list(SCENARIOS).index(name)  # each scenario's customers are its own
    mirror = projections_key(load_topology(config))
    with running_processes(config, env, name) as running:
        load = run_like_work(drive(options, running, env, backlog, mirror, client, number))
    client.close()
    result = summarise(name, options, backlog, running, load)
    log_progress(progress_line(result))
    if result.send_lag_p99_ms > SEND_LAG_WARNING_MS:
        log_progress(
            f"  WARNING send lag p99 {result.send_lag_p99_ms:.0f} ms: the generator was short of "
            "CPU and sent less than the rate asked"
        )
    if catching_up and not result.covered:
        log_progress(
            "  WARNING a follower caught up before the load ended: the window is not all "
            "catch-up; give --events more"
        )
    return result


def progress_line(result: ScenarioResult) -> str:
    """One line per scenario: every figure measured."""
    parts = [
        f"  {result.name}: sent {result.sent}, errors {result.errors}"
        + (f" (status: POSTs {result.error_statuses}, 0: no answer)" if result.errors else ""),
        f"POST p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms",
        f"replies {result.replied}, send lag p99 {result.send_lag_p99_ms:.1f} ms",
        f"load +{result.window[0]:.1f}..+{result.window[1]:.1f} s",
    ]
    for follower, (behind, caught_up) in result.catch_up.items():
        if follower in result.catching_up:
            parts.append(
                f"{follower} applied {result.applied[follower]:,.0f} in the window, "
                f"last seen behind at {since_text(behind)}, caught up by {since_text(caught_up)}"
            )
    parts.append(
        "CPU % of one core: "
        + ", ".join(f"{name} {percent:.0f}" for name, percent in result.cpu.items())
    )
    return "; ".join(parts)
