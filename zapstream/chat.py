"""`zapstream chat`: be a WhatsApp customer of a running pipeline, from the terminal.

Each line typed is posted to the server's webhook (`--url`) as Meta would post it: a signed
notification with a current timestamp. The Graph API stand-in (standin.py) listens where
WHATSAPP_API_URL points, which must be loopback, for the server and for chat alike; it prints
each reply as it arrives and reports its statuses back, as Meta does.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx
import uvicorn

from zapstream.run import EmbeddedServer, StopOnSignal
from zapstream.settings import ConfigError, Settings
from zapstream.signing import sign
from zapstream.standin import GraphStandIn, Received, text_notification

BUSINESS = "100000000000001"  # the business number chat talks to
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def standin_address(api_url: str) -> tuple[str, int]:
    """Where the stand-in listens: WHATSAPP_API_URL's host and port, which must be loopback."""
    parts = urlsplit(api_url)
    if parts.hostname not in LOOPBACK or not parts.port:
        raise ConfigError(
            "chat answers for the Graph API on loopback: start the server and chat with "
            "WHATSAPP_API_URL=http://127.0.0.1:8025/v25.0 (any free port)"
        )
    return parts.hostname, parts.port


async def chat(settings: Settings, phone: str, url: str, *, business: str = BUSINESS) -> int:
    host, port = standin_address(settings.api_url)
    webhook = url.rstrip("/") + "/webhook/whatsapp"
    secret = settings.app_secrets[0]
    graph = GraphStandIn(
        webhook_url=webhook, app_secret=secret, statuses=("sent", "delivered", "read")
    )
    graph.listeners.append(lambda request: _show(request, phone))
    config = uvicorn.Config(graph, host=host, port=port, log_config=None, access_log=False)
    server = EmbeddedServer(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            print(f"zapstream: cannot listen on {host}:{port}", file=sys.stderr)
            return 1
        await asyncio.sleep(0.01)
    print(f"You are +{phone}, writing to business {business} through {webhook}.")
    print("Type a message and press Enter; Ctrl-D or /quit ends the chat.", flush=True)
    lines = _stdin_lines()
    ids = itertools.count(1)
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            with StopOnSignal(stop.set):
                while not stop.is_set():
                    line = await _next_line(lines, stop)
                    if line is None or line.strip() == "/quit":
                        break
                    if not line.strip():
                        continue
                    wamid = f"wamid.CHAT.{phone}.{int(time.time())}.{next(ids)}"
                    body = text_notification(business, phone, wamid, line.strip())
                    headers = {
                        "X-Hub-Signature-256": sign(body, secret),
                        "Content-Type": "application/json",
                    }
                    try:
                        response = await http.post(webhook, content=body, headers=headers)
                    except httpx.TransportError as err:
                        print(f"(not delivered: {type(err).__name__}: {err})", flush=True)
                        continue
                    if response.status_code != 200:
                        print(f"(the webhook answered {response.status_code})", flush=True)
    finally:
        server.should_exit = True
        await graph.close()
        await serving
    return 0


def _show(request: Received, phone: str) -> None:
    if request.to.lstrip("+") == phone and request.is_text:
        print(f"bot: {request.text}", flush=True)
    elif request.body.get("typing_indicator"):
        print("(bot is typing...)", flush=True)


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of standard input, read in a daemon thread (so that a chat ended by /quit or a
    signal does not wait for one more line)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    return queue


async def _next_line(lines: asyncio.Queue[str | None], stop: asyncio.Event) -> str | None:
    getting = asyncio.ensure_future(lines.get())
    stopping = asyncio.ensure_future(stop.wait())
    done, pending = await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return getting.result() if getting in done else None
