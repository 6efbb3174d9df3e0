"""Servers a test owns: a redis-server on its own port that the test may stop or pause, a
PostgreSQL cluster of its own that it may stop and start, and the webhook app on uvicorn at
127.0.0.1 on a free port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from zapstream.run import KEEP_ALIVE_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own (AOF, appendfsync always), never the machine's."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.02)  # polling a readiness condition, not synchronising on time
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10 s")

    def stop(self) -> None:
        """Stop it the way a crash would: SIGKILL (AOF with fsync always keeps every write)."""
        if self.process and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


PG_VERSION = "15"


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (pg_createcluster; root cannot run initdb),
    trusted on loopback, never the machine's server."""

    def __init__(self) -> None:
        self.name = f"zs_{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/zapstream"

    def create(self) -> None:
        _pg("pg_createcluster", PG_VERSION, self.name, "-p", str(self.port), "--", "--auth=trust")
        self.start()

    def start(self) -> None:
        _pg("pg_ctlcluster", PG_VERSION, self.name, "start")

    def stop(self, mode: str = "fast") -> None:
        """Open connections are cut, as when the server goes away; `immediate` is a crash
        (the next start recovers)."""
        _pg("pg_ctlcluster", PG_VERSION, self.name, "stop", "-m", mode)

    def drop(self) -> None:
        _pg("pg_dropcluster", "--stop", PG_VERSION, self.name)


def _pg(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


class Webhook:
    """An ASGI app served by uvicorn on 127.0.0.1 in the test's event loop."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = socket.socket()
        # uvicorn sets TCP_NODELAY on the sockets it creates, not on those it is given: without
        # it, a client in the same event loop waits out the 40 ms delayed ACK on every request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_S,  # as `zapstream serve`: clients close idle ones
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the webhook server stopped before it started")
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook server did not start within 10 s")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self.server and self.task:
            self.server.should_exit = True
            await self.task
