"""`zapstream run`, `chat`, `handoff` and `inspect` as a user runs them, in real processes: a
person chats with a running pipeline, asks for a human, and an operator releases them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from tests.notifications import SECRET, VERIFY_TOKEN
from tests.servers import free_port
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
PHONE = "15550004321"


class Chat:
    """`zapstream chat` with its stdin and stdout wired to the test."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    async def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    def bot(self) -> list[str]:
        return [line.removeprefix("bot: ") for line in self.lines if line.startswith("bot: ")]


@pytest.fixture
async def running(
    redis: Redis, redis_url: str, pg_url: str, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """`zapstream run` with short windows; yields the environment chat and the CLI share."""
    config = tmp_path / "streams.yaml"
    config.write_text(
        (ROOT / "streams.yaml")
        .read_text()
        .replace("quiet: 2s", "quiet: 200ms")
        .replace("max_wait: 10s", "max_wait: 1s")
    )
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "DATABASE_URL": pg_url,
        "DUCKDB_PATH": str(tmp_path / "analytics.duckdb"),
        "ARCHIVE_DIR": str(tmp_path / "archive"),
        "ZAPSTREAM_CONFIG": str(config),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_ACCESS_TOKEN": "run-token",
        "WHATSAPP_API_URL": f"http://127.0.0.1:{free_port()}/v25.0",
        "SERVER_URL": f"http://127.0.0.1:{port}",
    }
    log = (tmp_path / "run.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zapstream",
        "run",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    try:
        await eventually(lambda: _answers(port), timeout=20, interval=0.1)
        yield env
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), timeout=30) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        log.close()


async def _answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapstream", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


async def test_a_chat_with_run_a_handoff_and_its_release(
    running: dict[str, str], redis: Redis
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zapstream",
        "chat",
        "--as",
        PHONE,
        "--url",
        running["SERVER_URL"],
        cwd=ROOT,
        env=running,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    chat = Chat(process)
    try:
        await eventually(lambda: any("Type a message" in line for line in chat.lines), timeout=20)
        await chat.say("Olá! Qual o horário de domingo?")
        await eventually(lambda: len(chat.bot()) == 1, timeout=20)
        assert "domingos" in chat.bot()[0]
        assert "(bot is typing...)" in chat.lines

        await chat.say("quero falar com um atendente")
        await eventually(lambda: len(chat.bot()) == 2, timeout=20)
        held = await eventually(lambda: _held(running), timeout=20)
        (session,) = held
        assert session["customer"] == PHONE

        await chat.say("oi?")  # held: logged and turned, never answered by the AI
        await eventually(lambda: _blocked(redis), timeout=20)

        released = cli(running, "handoff", "release", session["session_id"])
        assert released.returncode == 0 and "released" in released.stdout
        again = cli(running, "handoff", "release", session["session_id"])
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert "is not held" in again.stderr
        assert "no session is held" in cli(running, "handoff", "list").stdout

        await chat.say("e como faço o pagamento?")
        await eventually(lambda: len(chat.bot()) == 3, timeout=20)
        assert "Pix" in chat.bot()[2]
        await chat.say("/quit")
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await chat.reader
    assert len(chat.bot()) == 3  # nothing answered the held turn

    # The read models followed it all: the report (from the analytics snapshot) and the
    # sessions table; a replay rebuilds both while `run` goes on, to the same figures.
    before = await eventually(lambda: _report(running, replies=3), timeout=30, interval=0.2)
    assert before["messages_in"] == 4 and before["turns"] == 4 and before["handoff_sessions"] == 1
    rows = await _sessions(running["DATABASE_URL"])
    assert [(r["wa_id"], r["status"], r["turn_count"]) for r in rows] == [(PHONE, "active", 4)]
    replayed = cli(running, "replay", "--projection", "all", "--since", "2026-11-01", "--yes")
    assert replayed.returncode == 0, replayed.stderr
    assert "sessions: rebuilt" in replayed.stdout and "analytics: rebuilt" in replayed.stdout
    # The session began after that day (no zone: UTC): it is the one rebuilt.
    for name in ("sessions", "analytics"):
        line = f"{name}: rebuilding 1 session touched since 2026-11-01T00:00:00+00:00 (of 1)"
        assert line in replayed.stdout, replayed.stdout
    after = await eventually(lambda: _report(running, replies=3), timeout=30, interval=0.2)
    assert after == before
    assert await _sessions(running["DATABASE_URL"]) == rows


def _held(env: dict[str, str]) -> list[dict[str, str]]:
    result = cli(env, "handoff", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def _report(env: dict[str, str], replies: int) -> dict[str, object] | None:
    result = cli(env, "report", "--json")
    if result.returncode != 0:  # no snapshot published yet
        assert "no analytics snapshot" in result.stderr, result.stderr
        return None
    found: dict[str, object] = json.loads(result.stdout)
    return found if found["replies_sent"] == replies else None


async def _sessions(url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        return list(await connection.fetch("SELECT * FROM zapstream.sessions ORDER BY 1"))
    finally:
        await connection.close()


async def _blocked(redis: Redis) -> bool:
    replies = await redis.xrange("zapstream:{p0}:replies")
    return any(f[b"type"] == b"reply.blocked" and f[b"reason"] == b"handoff" for _, f in replies)


async def test_inspect_lists_streams_groups_and_replies_in_doubt(
    redis: Redis, redis_url: str
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "ZAPSTREAM_CONFIG": str(ROOT / "streams.yaml"),
    }
    await redis.xadd("zapstream:{p0}:messages", {"type": "message.received"})
    await redis.zadd("zapstream:{p0}:doubt", {"s-1:1#0": 0})
    await redis.set("zapstream:paused", "WhatsApp error 190 (HTTP 401): token expired")
    result = cli(env, "inspect")
    assert result.returncode == 0, result.stderr
    assert "zapstream:{p0}:messages 1 " in " ".join(result.stdout.split())  # any padding
    assert "replies in doubt: 1" in result.stdout and "s-1:1#0" in result.stdout
    assert "sending: paused (WhatsApp error 190" in result.stdout
    found = json.loads(cli(env, "inspect", "--json").stdout)
    assert found["in_doubt"][0]["part"] == "s-1:1#0"


async def test_project_follows_and_answers_ready_for_redis_and_its_targets(
    redis: Redis, redis_url: str, pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "DATABASE_URL": pg_url,
        "DUCKDB_PATH": str(tmp_path / "analytics.duckdb"),
        "ARCHIVE_DIR": str(tmp_path / "archive"),
        "ZAPSTREAM_CONFIG": str(ROOT / "streams.yaml"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zapstream",
        "project",
        "--metrics-port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def ready() -> str:
                try:
                    response = await http.get(f"http://127.0.0.1:{port}/ready")
                except httpx.TransportError:
                    return ""
                return response.text if response.status_code == 200 else ""

            assert await eventually(ready, timeout=30, interval=0.1) == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (tmp_path / "analytics.duckdb.snapshot").exists()  # published at stop
