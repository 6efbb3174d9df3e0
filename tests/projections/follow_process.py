"""A sessions follower process for tests, run until killed.

python -m tests.projections.follow_process REDIS_URL DATABASE_URL [BATCH]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from projections.follower import Follower
from projections.sessions import SessionsTarget
from zapstream.connections import open_redis
from zapstream.logs import configure_logging
from zapstream.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


async def follow(redis_url: str, database_url: str, batch: int) -> None:
    topology = load_topology(ROOT / "streams.yaml")
    target = SessionsTarget(database_url)
    await target.start()
    try:
        async with open_redis(redis_url) as redis:
            await Follower(redis, topology, target, batch=batch, block_ms=100).run()
    finally:
        await target.close()


def main(argv: list[str]) -> int:
    redis_url, database_url, *rest = argv
    configure_logging("info", json=True)
    asyncio.run(follow(redis_url, database_url, int(rest[0]) if rest else 2000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
