"""CPU seconds used by the processes of a run (Linux /proc), to tell where the two cores went.

Read before and after the load: the difference over the load's wall time is the share of one
core each used. Redis's figure comes from INFO cpu and is server-wide: work on other databases
(the other engineer's tests) counts in it too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int) -> float:
    """utime + stime of one process, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # fields 14 and 15 of stat(5)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def tree_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (a Celery prefork worker's pool)."""
    return _process_seconds(pid) + sum(tree_seconds(child) for child in _children(pid))


def redis_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class CpuMeter:
    """CPU seconds of named process trees, this process and Redis, from start() to stop()."""

    def __init__(self, pids: Mapping[str, Sequence[int]], client: redis.Redis) -> None:
        self.pids = pids
        self.client = client
        self._start: dict[str, float] = {}
        self._wall = 0.0

    def _read(self) -> dict[str, float]:
        seconds = {name: sum(tree_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        seconds["generator"] = time.process_time()
        seconds["redis"] = redis_seconds(self.client)
        return seconds

    def start(self) -> None:
        self._start, self._wall = self._read(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """Percent of one core each used since start()."""
        end, wall = self._read(), time.monotonic() - self._wall
        return {name: 100 * (end[name] - self._start[name]) / wall for name in end}
