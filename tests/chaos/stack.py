"""The chaos run's processes: `zapstream serve`, three `zapstream work` and one
`zapstream project`, real subprocesses over the test's own Redis and PostgreSQL, each
restarted when it exits on its own, as compose.yaml's `restart: unless-stopped` would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.notifications import SECRET, VERIFY_TOKEN
from tests.processes import Worker
from tests.servers import free_port

SUPERVISE_S = 0.2  # how often the supervisor looks for a process that exited


class Stack:
    def __init__(
        self, redis_url: str, database_url: str, config: Path, graph_url: str, directory: Path
    ) -> None:
        self.port = free_port()
        self.logs = directory / "logs"
        self.logs.mkdir()
        self.duckdb_path = str(directory / "analytics.duckdb")
        self.env = {
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "DATABASE_URL": database_url,
            "DUCKDB_PATH": self.duckdb_path,
            "ARCHIVE_DIR": str(directory / "archive"),
            # A crash in native code (DuckDB, asyncpg) and a SIGABRT print every thread's
            # Python stack into the process's log: see dump().
            "PYTHONFAULTHANDLER": "1",
        }
        self.redis_url = redis_url
        self.config = config

        def process(name: str, *command: str, groups: tuple[str, ...] = ()) -> Worker:
            return Worker(
                redis_url,
                config,
                graph_url,
                self.logs,
                groups=groups,
                env=self.env,
                name=name,
                command=command,
            )

        self.webhook = process("serve", "serve", "--port", str(self.port))
        # Every group has two consumers in two processes at least: a kill leaves one running.
        self.workers = [
            process("work-a", "work"),
            process("work-b", "work"),
            process("work-c", "work", groups=("send", "settle")),
        ]
        self.project = process(
            "project", "project", "--projection", "sessions", "--projection", "analytics"
        )
        # (process, exit status, its log's last line) of each exit on its own
        self.exits: list[tuple[str, int, str]] = []
        self._supervising = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where Meta posts its notifications."""
        return f"{self.base_url}/webhook/whatsapp"

    @property
    def processes(self) -> list[Worker]:
        return [self.webhook, *self.workers, self.project]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    async def supervise(self) -> None:
        """Restart every process that exited on its own, until stop_supervising()."""
        self._supervising = True
        while self._supervising:
            for process in self.processes:
                assert process.process is not None
                status = process.process.poll()
                if status is not None:
                    self.exits.append((process.name, status, self._last_words(process)))
                    process.start()
            await asyncio.sleep(SUPERVISE_S)  # a supervisor's pace, not a synchronisation

    def stop_supervising(self) -> None:
        self._supervising = False

    def stop(self, *processes: Worker) -> None:
        """SIGTERM (the graceful stop), then SIGKILL after 30 s."""
        for process in processes or self.processes:
            process.stop()

    def cli_env(self) -> dict[str, str]:
        """The environment of a one-off `zapstream` command over this stack."""
        return {
            "PATH": os.environ["PATH"],
            "REDIS_URL": self.redis_url,
            "ZAPSTREAM_CONFIG": str(self.config),
            **self.env,
        }

    def events(self, name: str) -> Iterator[dict[str, Any]]:
        """The log lines of event `name`, from every process's every start."""
        needle = f'"event": "{name}"'
        for path in sorted(self.logs.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if needle in line and line.startswith("{"):
                    yield json.loads(line)

    def dump(self, process: Worker) -> str:
        """Every thread's stack of a live process that seems stuck (SIGABRT, which ends it),
        from its log."""
        if process.process is None or process.process.poll() is not None:
            return ""
        process.process.send_signal(signal.SIGABRT)
        process.process.wait(timeout=10)
        path = self.logs / f"{process.name}-{process.started - 1}.log"
        text = path.read_text(errors="replace")
        at = text.find("Fatal Python error")
        return text[at:] if at >= 0 else ""

    def _last_words(self, process: Worker) -> str:
        """The error its last start's log ends with (a traceback's last line)."""
        path = self.logs / f"{process.name}-{process.started - 1}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        said = [line.strip(" |+-") for line in lines]
        errors = [line for line in said if "Error" in line or "Exception" in line]
        return (errors or said or [""])[-1][:300]

    def tail(self, lines: int = 20) -> str:
        """The last lines of each process's last log: what a failure message shows."""
        shown = []
        for process in self.processes:
            path = self.logs / f"{process.name}-{process.started - 1}.log"
            if path.exists():
                last = path.read_text(errors="replace").splitlines()[-lines:]
                shown.append(f"--- {path.name}\n" + "\n".join(last))
        return "\n".join(shown)
