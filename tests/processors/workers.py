"""Worker processes for tests: `zapstream work`'s code path with a recording handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import msgspec

from tests.processors.recording import Options
from zapstream.topology import Topology

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Starts worker processes, each logging to its own file; kills what is left at the end."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.redis_url = redis_url
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_files: dict[int, Path] = {}

    def start(
        self, topo: Topology, options: Options, *, group: str = "g", metrics_port: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.processes)}.log"
        argv = [
            sys.executable,
            "-m",
            "tests.processors.worker",
            self.redis_url,
            msgspec.json.encode(msgspec.to_builtins(topo, enc_hook=float)).decode(),
            group,
            msgspec.json.encode(options).decode(),
        ]
        if metrics_port is not None:
            argv.append(str(metrics_port))
        with log.open("wb") as stderr:
            process = self._spawn(argv, stderr)
        self.processes.append(process)
        self.log_files[process.pid] = log
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return self.log_files[process.pid].read_text()

    def wait(self, process: subprocess.Popen[bytes], timeout: float) -> int:
        return process.wait(timeout=timeout)

    def _spawn(self, argv: list[str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.wait(timeout=10)
