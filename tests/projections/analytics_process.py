"""The analytics follower as a process of its own, for tests that kill it with SIGKILL:

    python -m tests.projections.analytics_process REDIS_URL PATH [BATCH]

It follows the log into the DuckDB file at PATH (publishing a snapshot every 50 ms) until
SIGTERM, then closes the target, which publishes a last snapshot.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from projections.analytics import AnalyticsTarget
from projections.follower import Follower
from zapstream.connections import open_redis
from zapstream.logs import configure_logging
from zapstream.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


async def follow(redis_url: str, path: str, batch: int) -> None:
    topology = load_topology(ROOT / "streams.yaml")
    target = AnalyticsTarget(path, snapshot_every=0.05)
    async with open_redis(redis_url) as redis:
        follower = Follower(redis, topology, target, batch=batch, block_ms=50)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, follower.stop)
        try:
            await target.start()
            await follower.run()
        finally:
            await target.close()


def main() -> None:
    configure_logging("info", json=True)
    redis_url, path = sys.argv[1], sys.argv[2]
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    asyncio.run(follow(redis_url, path, batch))


if __name__ == "__main__":
    main()
