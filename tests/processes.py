"""`zapstream work` (or another long-running command) as a real process for tests: started,
killed with SIGKILL, restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    """`zapstream work` processes (or `command`), one at a time, each logging to its own file."""

    def __init__(
        self,
        redis_url: str,
        config: Path,
        api_url: str,
        logs: Path,
        *,
        groups: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "work",
        command: tuple[str, ...] = ("work",),
    ) -> None:
        self.name = name
        self.env = {
            "PATH": os.environ["PATH"],
            "REDIS_URL": redis_url,
            "ZAPSTREAM_CONFIG": str(config),
            "WHATSAPP_ACCESS_TOKEN": "crash-token",
            "WHATSAPP_API_URL": api_url,
            **(env or {}),
        }
        self.argv = [sys.executable, "-m", "zapstream", *command]
        for group in groups:
            self.argv += ["--group", group]
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> None:
        log = self.logs / f"{self.name}-{self.started}.log"
        self.started += 1
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
            )

    def kill_and_restart(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no grace, no cleanup
        self.process.wait()
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_lines(self, event: str) -> int:
        needle = f'"event": "{event}"'
        return sum(p.read_text().count(needle) for p in self.logs.glob(f"{self.name}-*.log"))
