"""The servers under test: subprocesses on free loopback ports, awaited, always stopped."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import msgspec

from ingest_bench.progress import log_progress

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class ServerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to start one server: argv (without --host/--port) and its extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


class RunningServer(msgspec.Struct, frozen=True, kw_only=True):
    url: str  # http://127.0.0.1:<port>
    pid: int
    event_loop: str  # uvloop when the process has uvloop loaded, else asyncio


class ServerError(RuntimeError):
    """A server exited or did not answer its readiness probe in time."""


def free_port() -> int:
    """A port the kernel has just handed out on 127.0.0.1 (free unless someone races us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(host: str, port: int, path: str) -> bool:
    """True when GET `path` answers 200."""
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll GET /health until it answers 200; ServerError on exit or after READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not answers("127.0.0.1", port, "/health"):
        if process.poll() is not None:
            raise ServerError(f"exited with {process.returncode}; see {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"no answer on port {port} in {READY_TIMEOUT_S:g} s; see {log}")
        time.sleep(0.05)  # the polling interval, not a wait for readiness


def event_loop_of(pid: int) -> str:
    """`uvloop` when the process has uvloop's extension mapped, else `asyncio` (Linux only)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still running after STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_servers(
    specs: Sequence[ServerSpec], out: Path
) -> Iterator[Mapping[str, RunningServer]]:
    """Start every server (stderr and stdout to out/<name>.log), wait until each answers, yield
    them by name, and stop them all on exit, whatever happened."""
    processes: list[subprocess.Popen[bytes]] = []
    servers: dict[str, RunningServer] = {}
    try:
        for spec in specs:
            port = free_port()
            log = out / f"{spec.name}.log"
            log_progress(f"starting {spec.name} on 127.0.0.1:{port}")
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [*spec.argv, "--host", "127.0.0.1", "--port", str(port)],
                    env={**os.environ, **spec.env}, cwd=out, stdout=sink,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            processes.append(process)
            try:
                wait_ready(process, port, log)
            except ServerError as err:
                raise ServerError(f"{spec.name}: {err}") from None
            servers[spec.name] = RunningServer(url=f"http://127.0.0.1:{port}", pid=process.pid,
                                               event_loop=event_loop_of(process.pid))
        yield servers
    finally:
        for process in processes:
            stop(process)
