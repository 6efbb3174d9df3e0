"""Redis memory per 100,000 messages, before and after archiving and trimming.

    .venv/bin/python scripts/retention_memory.py [MESSAGES] [ARCHIVE_DIR]

Starts a redis-server of its own (a free port, no persistence, a temporary directory) so that
nothing else on the machine moves the figures; appends MESSAGES (default 100,000)
`message.received` entries as the webhook writes them (a text message each, its Meta JSON in
`data`), archives them with the archive follower, trims `messages` with a retention of
`max_len: 1` (waiting for the archive only), and prints `used_memory` and `MEMORY USAGE` of
the stream at each step. Only the stream is measured: the dedup records beside it
(conversation hashes) are not part of the log and are not trimmed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from projections.archive import ArchiveTarget
from projections.follower import Follower
from projections.trim import trim
from zapstream.envelope import encode_fields
from zapstream.events import MessageReceived
from zapstream.keys import stream_key
from zapstream.topology import parse_topology

TOPOLOGY = """
trimming: {projections: [archive]}
streams:
  messages: {retention: {max_len: 1}}
  statuses: {}
"""


def _message(n: int) -> dict[str, str]:
    customer = f"5511{n % 5000:08d}"
    wamid = f"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBDNzM{n:012d}"
    ts = 1_795_000_000 + n
    data = {
        "from": customer,
        "id": wamid,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": f"Hi, I would like to know where my order {n} is"},
    }
    return encode_fields(
        MessageReceived(
            session_id=f"{n % 5000:012x}-{ts}",
            message_id=wamid,
            kind="text",
            from_=customer,
            customer=customer,
            phone_number_id="100000000000001",
            timestamp=ts,
            name="Customer",
            data=json.dumps(data, separators=(",", ":")),
        )
    )


async def _figures(redis: Redis, key: str) -> tuple[int, int, int]:
    info: dict[str, Any] = await redis.info("memory")
    usage = await redis.memory_usage(key, samples=0) or 0
    return int(info["used_memory"]), int(usage), int(await redis.xlen(key))


async def measure(url: str, messages: int, archive_dir: Path) -> None:
    topology = parse_topology(TOPOLOGY, source="retention_memory")
    key = stream_key(topology, "messages", 0)
    async with Redis.from_url(url) as redis:
        rows = [("empty", *await _figures(redis, key))]
        for start in range(0, messages, 1000):
            pipe = redis.pipeline(transaction=False)
            for n in range(start, min(start + 1000, messages)):
                pipe.xadd(key, _message(n))  # type: ignore[arg-type]
            await pipe.execute()
        rows.append((f"{messages:,} messages", *await _figures(redis, key)))
        target = ArchiveTarget(archive_dir, topology)
        await target.start()
        started = time.monotonic()
        try:
            await Follower(redis, topology, target).catch_up()
        finally:
            await target.close()
        archived_s = time.monotonic() - started
        await trim(redis, topology)
        rows.append(("archived and trimmed", *await _figures(redis, key)))
    size = await asyncio.to_thread(_archive_bytes, archive_dir)
    print(f"{'step':<22} {'used_memory':>14} {'stream MEMORY USAGE':>20} {'XLEN':>9}")
    for name, used, usage, length in rows:
        print(f"{name:<22} {used:>14,} {usage:>20,} {length:>9,}")
    per = (rows[1][1] - rows[0][1]) / messages * 100_000
    print(f"Redis memory per 100,000 messages: {per / 2**20:,.1f} MiB before trimming")
    print(f"after trimming: {(rows[2][1] - rows[0][1]) / 2**20:,.2f} MiB above an empty Redis")
    print(f"archive: {size / 2**20:,.1f} MiB of Parquet, written in {archived_s:.1f}s")


def _archive_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*.parquet"))


def main(argv: list[str]) -> int:
    messages = int(argv[0]) if argv else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(500):  # until it answers (at most 10 s)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.02)
            archive = Path(argv[1]) if len(argv) > 1 else Path(tmp) / "archive"
            asyncio.run(measure(url, messages, archive))
        finally:
            server.kill()
            server.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
