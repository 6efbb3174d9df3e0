"""Dedup-appends per second: `dedup_append` from Python against redis-benchmark.

Both run append.lua with one event per call from 50 concurrent clients, without pipelining,
on a flushed database: what Python costs on top of the script is the gap between the two.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

import ingest.append
from ingest.append import AppendBatcher, _script_call, dedup_append
from ingest.payload import Inbound, decode_notification
from ingest_bench import benchdb
from ingest_bench.corpus import read_bodies
from ingest_bench.options import Options
from ingest_bench.progress import log_progress
from zapstream.connections import open_redis
from zapstream.run import uvloop
from zapstream.topology import Topology

APPEND_LUA = Path(ingest.append.__file__).with_name("append.lua").read_text(encoding="utf-8")

# More appends a second than one Python process makes: the items decoded ahead.
MAX_PYTHON_RATE = 20_000
CALIBRATION_REQUESTS = 5_000


class RedisBenchmarkError(RuntimeError):
    """redis-benchmark failed or got an error reply."""


class AppendFigures(msgspec.Struct, frozen=True, kw_only=True):
    python_rate: float  # appends/s through AppendBatcher, the webhook's path
    unbatched_rate: float  # appends/s with one dedup_append call (one EVALSHA) per event
    python_loop: str  # asyncio or uvloop
    benchmark_rate: float  # appends/s
    command: str  # the redis-benchmark command, as run


def loop_name() -> str:
    """The loop the Python side runs on: the one `zapstream serve` runs on."""
    return "asyncio" if uvloop is None else "uvloop"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where installed, as zapstream.run.run_command uses."""
    return None if uvloop is None else uvloop.new_event_loop


async def count_python_appends(
    redis_url: str, topology: Topology, items: list[Inbound], concurrency: int, seconds: float,
    *, batched: bool,
) -> tuple[int, float]:
    """`concurrency` tasks append one item per call until `seconds` pass or the items run out;
    (appended, seconds taken). Batched: through AppendBatcher, as the webhook appends; else
    one dedup_append call, one EVALSHA, per item."""
    pending = iter(items)
    appended = 0
    async with open_redis(redis_url) as client:
        await client.script_load(APPEND_LUA)
        batcher = AppendBatcher(client, topology)

        async def append_until(deadline: float) -> None:
            nonlocal appended
            for item in pending:
                if batched:
                    result = await batcher.append([item], topology.webhook.append_timeout)
                else:
                    result = await dedup_append(client, topology, [item])
                if result[0] is None:
                    raise RuntimeError(f"{item.dedup_id} was a duplicate: the corpus repeats")
                appended += 1
                if time.perf_counter() >= deadline:
                    return

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(append_until(started + seconds))
        return appended, time.perf_counter() - started


def redis_benchmark_command(
    redis_url: str, topology: Topology, item: Inbound, sha: str, clients: int, requests: int
) -> list[str]:
    """redis-benchmark calling append.lua (EVALSHA) with dedup_append's KEYS/ARGV for one event.

    The dedup field becomes `d__rand_int__` so that every call writes a new dedup record (13
    bytes instead of 9: an argument on a command line cannot carry the binary digest).
    """
    # _script_call is private, used on purpose: redis-benchmark must send exactly the KEYS/ARGV
    # that dedup_append sends for one event, whatever append.py comes to build.
    keys, args = _script_call(topology, [item], partition=0)
    argv = list(args)
    argv[5] = "d__rand_int__"  # ARGV: window, gap, ttl, count, then rule, dedup field, ...
    words = [value.decode() if isinstance(value, bytes) else str(value) for value in argv]
    url = urlsplit(redis_url)
    return [
        "redis-benchmark", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379),
        "--dbnum", url.path.strip("/") or "0", "-c", str(clients), "-n", str(requests),
        "-r", "1000000000", "-P", "1", "--csv",
        "EVALSHA", sha, str(len(keys)), *keys, *words,
    ]


def run_redis_benchmark(command: list[str]) -> float:
    """Requests per second from redis-benchmark's --csv output."""
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0 or "Error" in output:
        raise RedisBenchmarkError(
            f"redis-benchmark failed ({completed.returncode}): {output.strip()[-2000:]}")
    row = completed.stdout.strip().splitlines()[-1]
    # "test","rps","avg_latency_ms",... (8 columns); the test's name holds the JSON's quotes.
    return float(row.rsplit('","', 7)[1])


def measure_python(
    options: Options, corpus: Path, topology: Topology, *, batched: bool
) -> float:
    """Appends per second from Python, items decoded ahead as the webhook has them."""
    bodies = read_bodies(corpus, int(options.append_seconds * MAX_PYTHON_RATE))
    items = [item for body in bodies for item in decode_notification(body)]
    how = "AppendBatcher.append" if batched else "dedup_append"
    log_progress(f"python: {options.append_concurrency} tasks calling {how} for "
                 f"{options.append_seconds:g} s ({loop_name()} loop)")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        appended, elapsed = runner.run(count_python_appends(
            options.redis_url, topology, items, options.append_concurrency,
            options.append_seconds, batched=batched))
    if appended == len(items):
        log_progress(f"  WARNING the Python appenders ran out of items after {elapsed:.1f} s")
    log_progress(f"  {appended / elapsed:,.0f} appends/s ({appended} in {elapsed:.2f} s)")
    return appended / elapsed


def measure_redis_benchmark(
    options: Options, corpus: Path, topology: Topology
) -> tuple[float, list[str]]:
    """Appends per second of redis-benchmark, sized by a short calibration run to last about
    `append_seconds`; (rate, the command)."""
    item = decode_notification(next(read_bodies(corpus, 1)))[0]
    client = benchdb.connect(options.redis_url)
    sha = client.script_load(APPEND_LUA)
    calibration = run_redis_benchmark(redis_benchmark_command(
        options.redis_url, topology, item, sha, options.append_concurrency,
        CALIBRATION_REQUESTS))
    requests = max(CALIBRATION_REQUESTS, int(calibration * options.append_seconds))
    command = redis_benchmark_command(
        options.redis_url, topology, item, sha, options.append_concurrency, requests)
    benchdb.flush(client)
    log_progress(f"redis-benchmark: {requests} EVALSHA calls from "
                 f"{options.append_concurrency} clients")
    rate = run_redis_benchmark(command)
    # redis-benchmark counts an error reply as a request: check that the appends happened
    # (a few dedup fields may repeat by chance: -r draws them at random).
    appended = benchdb.appended_messages(client, topology)
    if appended < 0.99 * requests:
        log_progress(f"  WARNING redis-benchmark appended {appended} of {requests}")
    log_progress(f"  {rate:,.0f} appends/s ({appended} appended)")
    return rate, command


def bench_appends(options: Options, corpus: Path, topology: Topology) -> AppendFigures:
    """Python's appends per second, then redis-benchmark's, each on a flushed database."""
    client = benchdb.connect(options.redis_url)
    benchdb.flush(client)
    python_rate = measure_python(options, corpus, topology, batched=True)
    benchdb.flush(client)
    unbatched_rate = measure_python(options, corpus, topology, batched=False)
    benchdb.flush(client)
    benchmark_rate, command = measure_redis_benchmark(options, corpus, topology)
    benchdb.flush(client)
    return AppendFigures(python_rate=python_rate, unbatched_rate=unbatched_rate,
                         python_loop=loop_name(),
                         benchmark_rate=benchmark_rate, command=shlex.join(command))
