"""A projection's follower as a process of its own, for tests that kill it with SIGKILL:

    python -m tests.projections.follow_process sessions|analytics|archive REDIS_URL TARGET BATCH

TARGET is the database URL (sessions), the DuckDB file (analytics, publishing a snapshot every
50 ms) or the archive folder (archive). It follows the log until SIGTERM, then closes the
target (analytics publishes a last snapshot).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from projections.analytics import AnalyticsTarget
from projections.archive import ArchiveTarget
from projections.follower import Follower, Target
from projections.sessions import SessionsTarget
from zapstream.connections import open_redis
from zapstream.logs import configure_logging
from zapstream.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]


def make_target(name: str, where: str, topology: Topology) -> Target:
    if name == "sessions":
        return SessionsTarget(where)
    if name == "analytics":
        return AnalyticsTarget(where, snapshot_every=0.05)
    if name == "archive":
        return ArchiveTarget(where, topology)
    raise SystemExit(f"unknown projection {name!r}")


async def follow(name: str, redis_url: str, where: str, batch: int) -> None:
    topology = load_topology(ROOT / "streams.yaml")
    target = make_target(name, where, topology)
    async with open_redis(redis_url) as redis:
        follower = Follower(redis, topology, target, batch=batch, block_ms=50)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, follower.stop)
        try:
            await target.start()
            await follower.run()
        finally:
            await target.close()


def main(argv: list[str]) -> int:
    name, redis_url, where, batch = argv
    configure_logging("info", json=True)
    asyncio.run(follow(name, redis_url, where, int(batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
