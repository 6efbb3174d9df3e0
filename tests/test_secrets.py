"""Logs and secrets, with real processes: `serve`, `work` and `project` run a full flow with
every secret set (a rotating app secret, the verify token, the access token, an LLM key, the
handoff secret) against stand-ins on 127.0.0.1. Then every output is searched: each process's
stdout and stderr, every /metrics, /ready and /health answer, the operator commands' output
and everything in Redis. No secret may appear anywhere; no customer's words may appear in a
log at info level; the log lines are JSON and carry the ids of what they are about."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.llm import ChatStandIn, Reply, completion
from tests.processors.replying import Receiver
from tests.servers import Webhook, free_port
from tests.waiting import eventually
from zapstream.signing import sign
from zapstream.standin import GraphStandIn, Received, error, text_notification

ROOT = Path(__file__).resolve().parents[1]
BUSINESS = "100000000000001"
MARK = "BODYMARK"  # in every customer's message: it must never reach an info-level log


class Processes:
    """zapstream commands as subprocesses, each writing stdout and stderr to its own files."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.running: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str, *args: str) -> None:
        out = (self.directory / f"{name}.out").open("wb")
        err = (self.directory / f"{name}.err").open("wb")
        self.running[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "zapstream", *args, cwd=self.directory, env=self.env,
            stdout=out, stderr=err,
        )  # fmt: skip
        out.close()
        err.close()

    async def command(self, *args: str) -> str:
        """A one-shot command; its stdout and stderr together (exit status 0 required)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "zapstream", *args, cwd=self.directory, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, (args, err.decode())
        return out.decode() + err.decode()

    async def succeeds(self, *args: str) -> bool:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "zapstream", *args, cwd=self.directory, env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return await asyncio.wait_for(process.wait(), 60) == 0

    async def stop(self) -> None:
        for process in self.running.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.running.items():
            assert await asyncio.wait_for(process.wait(), 30) == 0, name

    def kill(self) -> None:
        for process in self.running.values():
            if process.returncode is None:
                process.kill()

    def outputs(self) -> dict[str, str]:
        return {
            path.name: path.read_text(errors="replace")
            for path in sorted(self.directory.glob("*.out")) + sorted(self.directory.glob("*.err"))
        }


@dataclass
class StandIns:
    graph: GraphStandIn
    graph_url: str
    llm: ChatStandIn
    handoffs: Receiver
    handoffs_url: str


@pytest.fixture
async def stand_ins() -> AsyncIterator[StandIns]:
    """The Graph API (one customer undeliverable, another hitting an expired token once), an
    LLM that fails once, and the handoff receiver."""
    calls: dict[str, int] = {}

    def script(request: Received) -> Any:
        customer = request.to.lstrip("+")
        calls[customer] = calls.get(customer, 0) + 1
        if customer == "15550000003":
            return error(131026, "Message undeliverable")
        if customer == "15550000002" and calls[customer] == 1:
            return error(190, "Access token has expired", status=401)
        return None

    graph = GraphStandIn(script=script)
    handoffs = Receiver()
    llm = ChatStandIn([Reply(status=500, json={"error": "busy"}), completion("Sure, at 9.")])
    graph_server, receiver = Webhook(graph), Webhook(handoffs)
    for server in (graph_server, receiver, llm.server):
        await server.start()
    try:
        yield StandIns(graph, graph_server.url, llm, handoffs, receiver.url)
    finally:
        llm.released.set()
        await graph.close()
        for server in (graph_server, receiver, llm.server):
            await server.stop()


async def test_no_secret_reaches_any_output_and_logs_carry_the_ids(
    redis: Redis,
    redis_url: str,
    pg_url: str,
    tmp_path: Path,
    stand_ins: StandIns,
) -> None:
    graph, llm = stand_ins.graph, stand_ins.llm
    app_secret, old_app_secret = (f"appsecret{secrets.token_hex(8)}" for _ in range(2))
    hidden = {
        "WHATSAPP_APP_SECRET": f"{app_secret},{old_app_secret}",
        "WHATSAPP_VERIFY_TOKEN": f"verify{secrets.token_hex(8)}",
        "WHATSAPP_ACCESS_TOKEN": f"EAAtoken{secrets.token_hex(12)}",
        "OPENAI_API_KEY": f"sk-{secrets.token_hex(12)}",
        "HANDOFF_WEBHOOK_SECRET": f"handoff{secrets.token_hex(8)}",
    }
    config = tmp_path / "streams.yaml"
    config.write_text(
        (ROOT / "streams.yaml")
        .read_text()
        .replace("quiet: 2s", "quiet: 200ms")
        .replace("max_wait: 10s", "max_wait: 1s")
        .replace("pause: 1m", "pause: 1s")
    )
    port, work_port, project_port = free_port(), free_port(), free_port()
    server = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "DATABASE_URL": pg_url,
        "DUCKDB_PATH": str(tmp_path / "analytics.duckdb"),
        "ARCHIVE_DIR": str(tmp_path / "archive"),
        "ZAPSTREAM_CONFIG": str(config),
        "WHATSAPP_API_URL": f"{stand_ins.graph_url}/v25.0",
        "RESPONDER": "openai",
        "OPENAI_BASE_URL": f"{llm.server.url}/v1",
        "OPENAI_MODEL": "llama3.2",
        "HANDOFF_WEBHOOK_URL": f"{stand_ins.handoffs_url}/handoffs",
        **hidden,
    }
    graph.webhook_url = f"{server}/webhook/whatsapp"
    graph.app_secret = old_app_secret  # Meta signing with the secret being rotated out

    processes = Processes(tmp_path, env)
    answers: list[str] = []
    try:
        await processes.start("serve", "serve", "--port", str(port))
        await processes.start("work", "work", "--metrics-port", str(work_port))
        await processes.start("project", "project", "--metrics-port", str(project_port))
        async with httpx.AsyncClient(timeout=10) as http:
            await eventually(lambda: _ready(http, port, work_port, project_port), timeout=30)
            answers += await _full_flow(http, server, hidden, old_app_secret)

            # Everyone got an outcome: replies sent to the first two (the second after the
            # pause), the third undeliverable (131026), the fourth handed to a human.
            def answered() -> bool:
                sent_to = {text.to for text in graph.texts}
                return {"+15550000001", "+15550000002"} <= sent_to and bool(
                    stand_ins.handoffs.received
                )

            await eventually(answered, timeout=30, interval=0.1)
            await eventually(lambda: _failed(redis), timeout=30, interval=0.1)
            await eventually(lambda: processes.succeeds("report"), timeout=30, interval=0.2)
            for at in (port, work_port, project_port):
                for path in ("/metrics", "/ready", "/health"):
                    answers.append((await http.get(f"http://127.0.0.1:{at}{path}")).text)
        for args in (
            ("inspect",),
            ("inspect", "--json"),
            ("handoff", "list"),
            ("handoff", "list", "--json"),
            ("dlq", "list", "--json"),
            ("report",),
            ("report", "--json"),
        ):
            answers.append(await processes.command(*args))
        answers.append(await _everything_in(redis))
        await processes.stop()
    finally:
        processes.kill()

    outputs = {**processes.outputs(), **{f"answer {n}": a for n, a in enumerate(answers)}}
    values = [part for value in hidden.values() for part in value.split(",")]
    for name, text in outputs.items():
        for value in values:
            assert value not in text, f"a secret appears in {name}"
    assert llm.requests[-1].headers["authorization"] == f"Bearer {hidden['OPENAI_API_KEY']}"
    assert graph.texts[0].headers["authorization"] == f"Bearer {hidden['WHATSAPP_ACCESS_TOKEN']}"

    logs = {name: text for name, text in outputs.items() if name.endswith(".err")}
    lines = [json.loads(line) for text in logs.values() for line in text.splitlines() if line]
    for name, text in logs.items():
        assert MARK not in text, f"a customer's words appear in {name} at info level"
    assert any(line["event"] == "sender_paused" for line in lines)
    for event, group in (("turn_settled", "respond"), ("reply_sent", "send")):
        found = [line for line in lines if line["event"] == event]
        assert found, event
        for line in found:
            assert line["group"] == group
            for field in ("session_id", "turn_id", "entry_id", "message_id"):
                assert line[field], (event, field, line)


async def _ready(http: httpx.AsyncClient, *ports: int) -> bool:
    try:
        answers = [await http.get(f"http://127.0.0.1:{port}/ready") for port in ports]
    except httpx.HTTPError:
        return False
    return all(answer.status_code == 200 for answer in answers)


async def _full_flow(
    http: httpx.AsyncClient, server: str, hidden: dict[str, str], app_secret: str
) -> list[str]:
    """Meta's handshake (right and wrong token), a bad signature, four customers."""
    answers = []
    token = hidden["WHATSAPP_VERIFY_TOKEN"]
    for given, status in ((token, 200), ("not-the-token", 403)):
        params = {"hub.mode": "subscribe", "hub.verify_token": given, "hub.challenge": "4242"}
        answer = await http.get(f"{server}/webhook/whatsapp", params=params)
        assert answer.status_code == status
        answers.append(answer.text)
    writes = [
        ("15550000001", f"{MARK} hello, are you open on Sunday?"),
        ("15550000002", f"{MARK} what time do you open?"),
        ("15550000003", f"{MARK} can you deliver?"),
        ("15550000004", f"{MARK} quero falar com um atendente"),
    ]
    for n, (customer, text) in enumerate(writes):
        body = text_notification(BUSINESS, customer, f"wamid.SECRETS.{n}", text)
        headers = {"X-Hub-Signature-256": sign(body, app_secret)}
        answer = await http.post(f"{server}/webhook/whatsapp", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        answers.append(answer.text)
    forged = {"X-Hub-Signature-256": sign(body, "not-the-secret")}
    answer = await http.post(f"{server}/webhook/whatsapp", content=body, headers=forged)
    assert answer.status_code == 401
    answers.append(answer.text)
    return answers


async def _failed(redis: Redis) -> bool:
    types = [fields[b"type"] for _, fields in await redis.xrange("zapstream:{p0}:replies")]
    return types.count(b"reply.failed") == 1


async def _everything_in(redis: Redis) -> str:
    """Every key of the test database with its value, as text."""
    parts = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "stream":
            value: Any = await redis.xrange(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "string":
            value = await redis.get(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        else:
            value = await redis.smembers(key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)
