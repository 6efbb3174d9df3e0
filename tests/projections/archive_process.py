"""The archive follower as a process of its own, for tests that kill it with SIGKILL:

python -m tests.projections.archive_process REDIS_URL ARCHIVE_DIR [BATCH]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from projections.archive import ArchiveTarget
from projections.follower import Follower
from zapstream.connections import open_redis
from zapstream.logs import configure_logging
from zapstream.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


async def follow(redis_url: str, directory: str, batch: int) -> None:
    topology = load_topology(ROOT / "streams.yaml")
    target = ArchiveTarget(directory, topology)
    await target.start()
    try:
        async with open_redis(redis_url) as redis:
            await Follower(redis, topology, target, batch=batch, block_ms=100).run()
    finally:
        await target.close()


def main(argv: list[str]) -> int:
    redis_url, directory, *rest = argv
    configure_logging("info", json=True)
    asyncio.run(follow(redis_url, directory, int(rest[0]) if rest else 2000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
