"""Leave an empty Redis database in the state an operator meets at 3 a.m., to practise on.

    .venv/bin/python scripts/operator_scenario.py        # REDIS_URL, default db 0

Runs the real commands against REDIS_URL (refused unless that database is empty), with a
Graph API stand-in and an LLM that never answers, both on 127.0.0.1:

1. `zapstream run`: six customers write; five get their answer, the sixth's reply is refused
   by the Graph API with an error code zapstream does not know: a dead letter of `send`.
2. `zapstream serve` alone: eight more customers write, and nobody reads: `debounce` lags.
3. `zapstream work --group debounce` cuts their turns; then `zapstream work --group respond`
   with an LLM that hangs takes the turns and is killed with SIGKILL: its entries stay pending
   for a consumer whose heartbeat soon expires.

The read models stop with `run`, so trimming is pinned. README's "Inspecting with redis-cli"
was run against what this leaves. Clean up with `redis-cli FLUSHDB` (and drop the database
named in the last line).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from zapstream.run import EmbeddedServer
from zapstream.signing import sign
from zapstream.standin import Answer, GraphStandIn, Received, error, text_notification

ROOT = Path(__file__).resolve().parents[1]
BUSINESS = "100000000000001"
SECRET = "scenario-app-secret"
REFUSED = "15550000099"  # the customer whose reply gets an unknown WhatsApp error
TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HangingLLM:
    """A chat completions endpoint that never answers (until the scenario ends)."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await self.released.wait()
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def serve(app: Any, port: int) -> tuple[EmbeddedServer, asyncio.Task[None]]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, "a stand-in to listen")
    return server, task


async def until(check: Callable[[], Any], what: str) -> None:
    """Wait for a condition (a function, sync or async) with a deadline."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"operator_scenario: gave up waiting for {what}")


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    print("$ zapstream", " ".join(args), flush=True)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zapstream", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def stop(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    await asyncio.wait_for(process.wait(), TIMEOUT_S)


async def answers(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            return (await http.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
    except httpx.HTTPError:
        return False


async def write(http: httpx.AsyncClient, port: int, customer: str, n: int, text: str) -> None:
    body = text_notification(BUSINESS, customer, f"wamid.SCENARIO.{customer}.{n}", text)
    answer = await http.post(
        f"http://127.0.0.1:{port}/webhook/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": sign(body, SECRET)},
    )
    answer.raise_for_status()


async def group_info(redis: Redis, key: str, group: str) -> dict[str, object]:
    for info in await redis.xinfo_groups(key):
        if info["name"].decode() == group:
            return dict(info)
    return {}


async def main() -> int:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis = Redis.from_url(redis_url, socket_timeout=10)
    if await redis.dbsize():
        print(f"operator_scenario: {redis_url} is not empty; it only fills an empty database")
        return 1
    work_dir = Path(tempfile.mkdtemp(prefix="zapstream-scenario-"))
    database = "zapstream_scenario"
    port, graph_port, llm_port = free_port(), free_port(), free_port()
    config = work_dir / "streams.yaml"
    config.write_text((ROOT / "streams.yaml").read_text().replace("quiet: 2s", "quiet: 200ms"))
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "DUCKDB_PATH": str(work_dir / "analytics.duckdb"),
        "ARCHIVE_DIR": str(work_dir / "archive"),
        "ZAPSTREAM_CONFIG": str(config),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "scenario-verify-token",
        "WHATSAPP_ACCESS_TOKEN": "scenario-access-token",
        "WHATSAPP_API_URL": f"http://127.0.0.1:{graph_port}/v25.0",
    }

    def refuse_one(request: Received) -> Answer | None:
        return error(131999, "Unknown error") if request.to == f"+{REFUSED}" else None

    graph = GraphStandIn(
        webhook_url=f"http://127.0.0.1:{port}/webhook/whatsapp",
        app_secret=SECRET,
        script=refuse_one,
    )
    llm = HangingLLM()
    graph_server, graph_task = await serve(graph, graph_port)
    llm_server, llm_task = await serve(llm, llm_port)
    async with httpx.AsyncClient(timeout=10) as http:
        # 1. Everything runs: five answers and a dead letter.
        run = await start(env, "run", "--port", str(port))
        await until(lambda: answers(port), "`zapstream run` to be ready")
        customers = [f"1555000000{n}" for n in range(1, 6)] + [REFUSED]
        for customer in customers:
            await write(http, port, customer, 1, "Olá, qual o horário de domingo?")
        await until(lambda: len(graph.texts) >= 5, "five replies")
        await until(lambda: redis.xlen("zapstream:{p0}:dead:send"), "the dead letter")
        await stop(run)

        # 2. The webhook alone: eight more customers, nobody reads.
        alone = await start(env, "serve", "--port", str(port))
        await until(lambda: answers(port), "`zapstream serve` to be ready")
        for n in range(8):
            await write(http, port, f"155500001{n:02d}", 1, "Vocês entregam no sábado?")

        # 3. debounce catches up; respond takes the turns, hangs on the LLM, is killed.
        debounce = await start(env, "work", "--group", "debounce")

        async def debounce_done() -> bool:
            group = await group_info(redis, "zapstream:{p0}:messages", "debounce")
            turns = await redis.xlen("zapstream:{p0}:turns")
            return group.get("lag") == 0 and group.get("pending") == 0 and turns >= 14

        await until(debounce_done, "debounce to cut the eight turns")
        await stop(debounce)
        respond_env = {
            **env,
            "RESPONDER": "openai",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "OPENAI_MODEL": "llama3.2",
        }
        respond = await start(respond_env, "work", "--group", "respond")

        async def respond_holds() -> bool:
            group = await group_info(redis, "zapstream:{p0}:turns", "respond")
            return group.get("pending") == 8

        await until(respond_holds, "respond to take the eight turns")
        print("$ kill -9 <the respond worker>", flush=True)
        await stop(respond, signal.SIGKILL)
        await stop(alone)
    llm.released.set()
    await graph.close()
    for server in (graph_server, llm_server):
        server.should_exit = True
    await asyncio.gather(graph_task, llm_task)
    await redis.aclose()
    print(
        f"scenario ready in {redis_url} (read models: PostgreSQL database {database}, {work_dir})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
