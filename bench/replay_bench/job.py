"""A job: one measurement, run in a process of its own (`python -m replay_bench.child`), so that
its peak RSS is its own (a fresh interpreter, the same imports as `zapstream replay`) and no
memory the log's writer or another job held is counted in it.

The child gets the Job as JSON in argv, draws its progress bar on stderr and prints one
Measurement as JSON on stdout. Meanwhile the parent samples the PostgreSQL backends serving
the bench's database (memory.py).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import msgspec

from ingest_bench.options import BENCH
from replay_bench.memory import BackendMemory

SAMPLE_EVERY_S = 0.25


class Job(msgspec.Struct, frozen=True, kw_only=True):
    what: Literal["xrange", "sessions", "analytics"]
    redis_url: str
    config: str  # streams.yaml
    batch: int  # the follower's
    database_url: str  # sessions: the bench's database, schema `zapstream`
    duckdb_path: str  # analytics: a fresh file
    memory_limit: str  # analytics: DuckDB's
    threads: int  # analytics: DuckDB's


class Timed(msgspec.Struct, frozen=True, kw_only=True):
    """What a child times: `events` read or applied in `seconds`."""

    events: int
    seconds: float
    rss_start_mb: float  # the child's resident set just before the clock starts
    settings: str  # how it read or applied, for the table


class Measurement(msgspec.Struct, frozen=True, kw_only=True):
    what: str
    timed: Timed
    peak_rss_mb: float  # the child's own peak (VmHWM)
    backends: BackendMemory | None = None  # PostgreSQL's, for sessions

    @property
    def rate(self) -> float:
        return self.timed.events / self.timed.seconds


def run_job(job: Job, database: str) -> Measurement:
    """Run `job` in a child process; its Measurement, with the backends of `database` sampled
    while it ran when the job is the sessions rebuild."""
    backends = BackendMemory(database=database) if job.what == "sessions" else None
    command = [sys.executable, "-m", "replay_bench.child", msgspec.json.encode(job).decode()]
    with subprocess.Popen(command, cwd=BENCH, stdout=subprocess.PIPE) as child:
        while True:
            try:
                child.wait(timeout=SAMPLE_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                if backends is not None:
                    backends.sample()
        out = child.stdout.read() if child.stdout else b""
    if child.returncode != 0:
        raise RuntimeError(f"the {job.what} job failed (exit {child.returncode}), see above")
    measurement = msgspec.json.decode(out.splitlines()[-1], type=Measurement)
    return msgspec.structs.replace(measurement, backends=backends)
