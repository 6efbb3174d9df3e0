"""Resident memory (Linux /proc): the bench process's own peak, and that of the
PostgreSQL backends serving the bench's database, which are processes of their own.

A backend's VmRSS counts the shared buffers it has touched (shared with every backend and the
postmaster) beside its private memory (RssAnon): both are kept, the private part being what
the rebuild adds to the server.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

MB = 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set so far: VmHWM, not getrusage's ru_maxrss, which
    keeps the parent's resident set at the fork across the exec of a child."""
    return status_mb("self", "VmHWM")[0]


def status_mb(pid: int | str, *fields: str) -> tuple[float, ...]:
    """Fields of /proc/<pid>/status in MB (0 for each when the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return (0.0,) * len(fields)
    found = dict(line.split(":", 1) for line in lines if ":" in line)
    return tuple(int(found.get(name, "0 kB").split()[0]) * 1024 / MB for name in fields)


def rss_mb() -> float:
    """This process's resident set now."""
    return status_mb("self", "VmRSS")[0]


def backends_of(database: str) -> list[int]:
    """PostgreSQL backends connected to `database`, by their process title
    (`postgres: 15/main: <user> <database> <host>(<port>) <state>`)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and f" {database} " in title:
            pids.append(int(cmdline.parent.name))
    return pids


class BackendMemory(msgspec.Struct, kw_only=True):
    """The peak, over samples, of the backends' summed VmRSS and summed RssAnon, in MB."""

    database: str
    rss_mb: float = 0.0
    private_mb: float = 0.0

    def sample(self) -> None:
        sizes = [status_mb(pid, "VmRSS", "RssAnon") for pid in backends_of(self.database)]
        self.rss_mb = max(self.rss_mb, sum(rss for rss, _ in sizes))
        self.private_mb = max(self.private_mb, sum(private for _, private in sizes))
