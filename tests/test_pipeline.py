"""Webhook to reply, as deployed: the webhook app, a `zapstream work` process with the
repository's streams.yaml and the rules responder, and the Graph API stand-in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from redis.asyncio import Redis

from tests.notifications import messages_notification, signed_headers, text_message
from tests.servers import Webhook
from tests.waiting import eventually
from zapstream.envelope import decode_fields
from zapstream.events import ReplyGenerated
from zapstream.standin import GraphStandIn

ROOT = Path(__file__).resolve().parents[1]
REPLIES = "zapstream:{p0}:replies"


def start_work(
    redis_url: str, log: Path, api_url: str, config: Path = ROOT / "streams.yaml"
) -> subprocess.Popen[bytes]:
    """`zapstream work` sending to `api_url`, logging to `log`."""
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "zapstream", "work"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={
                "PATH": os.environ["PATH"],
                "REDIS_URL": redis_url,
                "ZAPSTREAM_CONFIG": str(config),
                "WHATSAPP_ACCESS_TOKEN": "pipeline-token",
                "WHATSAPP_API_URL": api_url,
            },
        )


async def test_a_customer_burst_gets_one_rules_reply(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "work.log"
    graph = GraphStandIn()
    graph_server = Webhook(graph)
    await graph_server.start()
    work = start_work(redis_url, log, graph_server.url + "/v25.0")
    try:
        for n, text in enumerate(["Hi!", "are you open on Sunday?"]):
            body = messages_notification(text_message(f"wamid.PIPE{n}", "15550001111", text))
            response = await http.post(
                webhook.url + "/webhook/whatsapp", content=body, headers=signed_headers(body)
            )
            assert response.status_code == 200

        async def replied() -> list[ReplyGenerated]:
            found = [decode_fields(f) for _, f in await redis.xrange(REPLIES)]
            return [r for r in found if isinstance(r, ReplyGenerated)]

        (reply,) = await eventually(replied, timeout=30, interval=0.1)
        assert reply.message_ids == ["wamid.PIPE0", "wamid.PIPE1"]  # one turn for the burst
        assert "Sundays" in reply.body and reply.customer == "15550001111"
        (text,) = await eventually(lambda: graph.texts, timeout=30, interval=0.1)
        assert text.text == reply.body and text.to == "+15550001111"
        assert text.headers["authorization"] == "Bearer pipeline-token"
        work.send_signal(signal.SIGTERM)
        assert work.wait(timeout=30) == 0
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
        await graph.close()
        await graph_server.stop()
    assert '"event": "reply_sent"' in log.read_text()
