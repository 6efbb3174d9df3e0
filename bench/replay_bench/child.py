"""A job's process: `python -m replay_bench.child '<Job as JSON>'` (from bench/, see job.py).

Runs on the event loop `zapstream replay` runs on (process_bench/loop.py) and prints its
Measurement as JSON on stdout, the last thing it does.
"""

from __future__ import annotations

import sys

import msgspec

from process_bench.loop import run_like_work
from replay_bench.job import Job, Measurement, Timed
from replay_bench.memory import peak_rss_mb
from replay_bench.rebuild import rebuild
from replay_bench.xrange import read_with_xrange
from zapstream.connections import open_redis
from zapstream.logs import configure_logging
from zapstream.topology import load_topology


async def measure(job: Job) -> Timed:
    topology = load_topology(job.config)
    async with open_redis(job.redis_url) as redis:
        if job.what == "xrange":
            return await read_with_xrange(redis, topology)
        return await rebuild(redis, topology, job)


def main() -> int:
    job = msgspec.json.decode(sys.argv[1], type=Job)
    configure_logging("warning")  # the follower's own lines (on stderr) only when they warn
    timed = run_like_work(measure(job))
    measurement = Measurement(what=job.what, timed=timed, peak_rss_mb=peak_rss_mb())
    print(msgspec.json.encode(measurement).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
