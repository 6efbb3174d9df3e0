"""run_wrk(): one wrk run with the corpus script, read back from its `BENCH ` line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec


class WrkError(RuntimeError):
    """wrk failed, or printed no `BENCH` line."""


class WrkResult(msgspec.Struct, frozen=True, kw_only=True):
    """One wrk run: completed requests, latency percentiles, and what went wrong."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    wraps: int
    problems: tuple[str, ...] = ()

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    def with_problems(self, problems: list[str]) -> WrkResult:
        return msgspec.structs.replace(self, problems=tuple(problems))


def parse_bench_line(output: str) -> WrkResult:
    """The figures of the `BENCH key=value ...` line the Lua script's done() prints."""
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise WrkError(f"wrk printed no BENCH line:\n{output}")
    values = {k: float(v) for k, v in (word.split("=", 1) for word in line.split()[1:])}
    return WrkResult(
        requests=int(values["requests"]),
        duration_s=values["duration_us"] / 1e6,
        p50_ms=values["p50_us"] / 1e3,
        p99_ms=values["p99_us"] / 1e3,
        non2xx=int(values["non2xx"]),
        socket_errors=int(sum(values[k] for k in ("connect_errors", "read_errors",
                                                  "write_errors", "timeouts"))),
        wraps=int(values["wraps"]),
    )


def run_wrk(
    base_url: str, corpus: Path, script: Path, *, threads: int, connections: int,
    duration: float,
) -> WrkResult:
    """POST the corpus to base_url's webhook for `duration` seconds; each thread its slice."""
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
        "--timeout", "10s", "-s", str(script), f"{base_url}/webhook/whatsapp",
        "--", str(corpus), str(threads),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise WrkError(f"wrk exited with {completed.returncode}: "
                       f"{(completed.stdout + completed.stderr).strip()[-2000:]}")
    return parse_bench_line(completed.stdout)
