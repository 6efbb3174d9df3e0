"""A Redis Cluster of the test's own: three primaries on free loopback ports, no replicas,
created with `redis-cli --cluster create` as an operator would."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

PRIMARIES = 3
READY_TIMEOUT_S = 30.0


class OwnCluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports: list[int] = []
        while len(self.ports) < PRIMARIES:
            port = _cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """One node: zapstream finds the others (cluster mode is detected)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            node = self.directory / f"node-{port}"
            node.mkdir(parents=True, exist_ok=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--dir", str(node),
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000",
                        "--save", "",
                        "--appendonly", "no",
                        "--logfile", str(node / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in self.ports:
            self._wait(partial(_answers, port, b"PING\r\n", b"+PONG"))
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise RuntimeError("redis-cli is not installed: it creates the test's cluster")
        subprocess.run(
            [
                redis_cli,
                "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        for port in self.ports:
            self._wait(partial(_cluster_ok, port))
        # Every node must know every slot's owner before clients ask any of them.
        self._wait(partial(_slots_agreed, redis_cli, self.ports[0]))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def _wait(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if condition():
                return
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a cluster node exited with {process.returncode}")
            time.sleep(0.05)  # polling a readiness condition, not synchronising on time
        raise RuntimeError(f"the test cluster on {self.ports} was not ready in time")


def _cluster_port() -> int:
    """A port whose bus port (+10000) is free too; Redis wants both below 65536."""
    while True:
        port = random.randrange(20000, 45000)  # below the kernel's ephemeral range
        if _bindable(port) and _bindable(port + 10000):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(port: int, command: bytes, expected: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(command)
            return sock.recv(4096).startswith(expected)
    except OSError:
        return False


def _cluster_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in sock.recv(4096)
    except OSError:
        return False


def _slots_agreed(redis_cli: str, port: int) -> bool:
    check = subprocess.run(
        [redis_cli, "--cluster", "check", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    return check.returncode == 0 and "All nodes agree about slots configuration" in check.stdout
