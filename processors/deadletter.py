"""Failures and dead letters: the backoff schedule, failure counts, the dead-letter stream.

A handler failure is counted per entry (apart from deliveries: an entry that only waited is
not a failure). At the group's max_failures, or at once for a Reject, the entry moves to the
group's dead-letter stream with its full original fields, the group, the error and both
counts, and is acked, in one fenced script (fail.lua).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from redis.asyncio import Redis

from zapstream.keys import dead_letter_key, failures_key, partition_of
from zapstream.scripts import Script
from zapstream.topology import Backoff, Topology

FAIL = Script(Path(__file__).with_name("fail.lua"))


class FailureRecord(msgspec.Struct, frozen=True, kw_only=True):
    failures: int
    dead_letter_id: str  # empty unless the entry was dead-lettered


def backoff_delay(backoff: Backoff, failures: int) -> float:
    """Seconds before retry number `failures` (1-based): base * factor^(n-1), at most max."""
    return float(min(backoff.max, backoff.base * backoff.factor ** max(0, failures - 1)))


async def record_failure(
    redis: Redis,
    topology: Topology,
    *,
    group: str,
    consumer: str,
    key: str,
    stream: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    error: str,
    deliveries: int,
    max_failures: int,
) -> FailureRecord | None:
    """Count one failure (max_failures 0: dead-letter now); None if the entry is not ours."""
    partition = partition_of(key)
    keys = [
        key,
        failures_key(topology, group, partition),
        dead_letter_key(topology, group, partition),
    ]
    args: list[bytes | str | int] = [
        group,
        consumer,
        entry_id,
        max_failures,
        error,
        deliveries,
        stream,
    ]
    for name, value in fields.items():
        args += [name, value]
    result = await FAIL.run(redis, keys, args)
    if result == -1:
        return None
    failures, dead = result
    return FailureRecord(failures=int(failures), dead_letter_id=dead.decode() if dead else "")
