"""Celery, the peer: N no-op tasks enqueued (timed apart), then one solo-pool worker runs them.

Per run: flush the bench's database; queue a `mark`, the N tasks, a closing `mark`
(celery_app.py); then start `celery worker --pool solo --concurrency 1` and poll Redis, with a
deadline, until the closing mark is written. The figure is N over the time between the two
marks, both taken inside the worker: the worker's start-up is left out of it (and printed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec
import redis

from ingest_bench import benchdb
from ingest_bench.options import BENCH, OUT
from ingest_bench.servers import stop, tail
from process_bench.celery_app import HANDLE_TURN, MARK, QUEUE, create_app
from process_bench.progress import log_progress
from process_bench.turns import turn_payload

START_KEY = "bench:celery:start"
END_KEY = "bench:celery:end"
MIN_TASK_RATE = 100  # tasks/s below which a run is reported as stuck
POLL_S = 0.02  # the polling interval, not a wait for completion

WORKER_ARGV = [
    sys.executable,
    "-m",
    "celery",
    "-A",
    "process_bench.celery_app",
    "worker",
    "--pool",
    "solo",
    "--concurrency",
    "1",
    "-Q",
    QUEUE,
    "--without-heartbeat",
    "--without-gossip",
    "--without-mingle",
    "--loglevel",
    "warning",
]


class CeleryRun(msgspec.Struct, frozen=True, kw_only=True):
    rate: float  # tasks/s between the two marks
    enqueue_rate: float  # tasks/s of the producer (not part of the figure)
    startup_s: float  # worker process start to its first mark


def enqueue(broker_url: str, tasks: int) -> float:
    """Queue the opening mark, `tasks` no-op tasks and the closing mark; tasks/s enqueued."""
    app = create_app(broker_url)
    handle_turn, mark = app.tasks[HANDLE_TURN], app.tasks[MARK]
    mark.apply_async(args=[START_KEY], queue=QUEUE)
    started = time.perf_counter()
    for n in range(tasks):
        handle_turn.apply_async(args=[msgspec.to_builtins(turn_payload(n))], queue=QUEUE)
    elapsed = time.perf_counter() - started
    mark.apply_async(args=[END_KEY], queue=QUEUE)
    app.close()
    return tasks / elapsed


def wait_for_mark(
    client: redis.Redis, worker: subprocess.Popen[bytes], log_path: str, deadline: float
) -> dict[bytes, bytes]:
    """The closing mark, once the worker has written it; RuntimeError on exit or deadline."""
    while not (end := client.hgetall(END_KEY)):
        if worker.poll() is not None:
            raise RuntimeError(
                f"the Celery worker exited with {worker.returncode}; "
                f"see {log_path}:\n{tail(OUT / log_path)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Celery: {client.llen(QUEUE)} tasks still queued at the deadline; see {log_path}"
            )
        time.sleep(POLL_S)
    return end


def run_once(broker_url: str, tasks: int) -> CeleryRun:
    client = benchdb.connect(broker_url)
    benchdb.flush(client)
    enqueue_rate = enqueue(broker_url, tasks)
    log_progress(
        f"  enqueued {tasks:,} tasks at {enqueue_rate:,.0f}/s (not timed); starting the worker"
    )
    log_name = "process-celery-worker.log"
    with (OUT / log_name).open("wb") as sink:
        launched = time.monotonic()
        worker = subprocess.Popen(
            WORKER_ARGV,
            cwd=BENCH,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BENCH_BROKER_URL": broker_url, "PYTHONPATH": str(BENCH)},
        )
    try:
        end = wait_for_mark(client, worker, log_name, launched + 60 + tasks / MIN_TASK_RATE)
    finally:
        stop(worker)
    start = client.hgetall(START_KEY)
    handled, queued = int(end[b"handled"]), client.llen(QUEUE)
    if handled != tasks or queued:
        raise RuntimeError(f"Celery: {handled} of {tasks} tasks ran, {queued} still queued")
    started_at, ended_at = float(start[b"at"]), float(end[b"at"])
    client.close()
    return CeleryRun(
        rate=tasks / (ended_at - started_at),
        enqueue_rate=enqueue_rate,
        startup_s=started_at - launched,
    )


def measure_celery(broker_url: str, tasks: int) -> CeleryRun:
    log_progress(f"celery: {tasks:,} no-op tasks, one solo-pool worker")
    OUT.mkdir(parents=True, exist_ok=True)
    run = run_once(broker_url, tasks)
    log_progress(f"  {run.rate:,.0f} tasks/s (worker start-up {run.startup_s:.2f} s)")
    return run
