"""The peer: the old design's consumer, a Celery app on a Redis broker with a no-op task.

    BENCH_BROKER_URL=redis://127.0.0.1:6379/8 celery -A process_bench.celery_app worker ...

`handle_turn` takes the turn.ready event (the fields zapstream's entries hold) as a dict and
does nothing with it. `mark` is queued before the first task and after the last one: with one
solo-pool worker on one queue, tasks run one at a time in queue order, so the two marks bracket
exactly the run of the no-op tasks. Each writes, to a Redis hash, the time (CLOCK_MONOTONIC,
which every process on the machine shares) and how many no-op tasks this worker has run,
so the bench can check that all of them ran between the two.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

QUEUE = "bench-process"
HANDLE_TURN = "bench.handle_turn"
MARK = "bench.mark"


def create_app(broker_url: str) -> Celery:
    app = Celery("bench_process_peer", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.task_default_queue = QUEUE
    handled = 0

    @app.task(name=HANDLE_TURN, shared=False)  # type: ignore[untyped-decorator]
    def handle_turn(event: dict[str, Any]) -> None:
        """The no-op task (counting in memory, for the closing mark, costs no round trip)."""
        nonlocal handled
        handled += 1

    @app.task(name=MARK, shared=False)  # type: ignore[untyped-decorator]
    def mark(key: str) -> None:
        client = redis.Redis.from_url(broker_url)
        client.hset(key, mapping={"at": repr(time.monotonic()), "handled": handled})
        client.close()

    return app


# What `celery -A process_bench.celery_app worker` loads.
app = create_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/8"))
