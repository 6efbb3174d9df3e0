"""The ceiling: a webhook that answers each text straight from the request, no queue at all.

    export PYTHONPATH=bench WHATSAPP_APP_SECRET=... WHATSAPP_API_URL=http://127.0.0.1:P/v25.0 \\
        WHATSAPP_ACCESS_TOKEN=...
    python bench/e2e_peers/direct_app.py --port PORT

It verifies the signature over the raw body, parses the JSON, answers 200, and POSTs the
rules answer of each text message to the Graph API with one shared httpx client, from one of
SENDERS tasks of the same process fed by an in-memory queue (unbounded tasks would queue up
on httpx's connection pool): no log, no dedup, no worker process, no mark-read. No design on the
same harness does less per conversation, so the highest rate this path holds is the most the
machine can hold at all (the stand-in, Redis-free, and the load generator share its CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import sys
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from e2e_peers.answers import pick_answer, reply_request, text_messages
from ingest_peers.serving import add_server_options, serve
from processors.rules import load_rules
from zapstream.signing import sign

HTTP_TIMEOUT_S = 10.0
SENDERS = 32  # concurrent Graph API POSTs, as zapstream's send group's concurrency


def create_app(app_secret: str, api_url: str, access_token: str) -> Starlette:
    rules = load_rules()
    headers = {"Authorization": f"Bearer {access_token}"}
    graph = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S)
    answers: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    async def send_answers() -> None:
        while True:
            business, sender, text = await answers.get()
            reply = reply_request(sender, pick_answer(rules, text))
            try:
                response = await graph.post(
                    f"{api_url.rstrip('/')}/{business}/messages", json=reply, headers=headers
                )
                response.raise_for_status()
            except httpx.HTTPError as err:  # the reply is missing: the bench counts it
                print(f"direct: no reply to {sender}: {err!r}", file=sys.stderr, flush=True)

    async def receive(request: Request) -> Response:
        body = await request.body()
        header = request.headers.get("x-hub-signature-256", "")
        if not hmac.compare_digest(sign(body, app_secret).encode(), header.encode()):
            return PlainTextResponse("invalid signature\n", status_code=401)
        for message in text_messages(json.loads(body)):
            answers.put_nowait(message)
        return PlainTextResponse("ok\n")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with graph:
            senders = [asyncio.create_task(send_answers()) for _ in range(SENDERS)]
            yield
            for task in senders:
                task.cancel()

    return Starlette(
        routes=[
            Route("/webhook/whatsapp", receive, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_options(parser)
    args = parser.parse_args()
    app = create_app(
        os.environ["WHATSAPP_APP_SECRET"],
        os.environ.get("WHATSAPP_API_URL", "http://127.0.0.1:9/v25.0"),
        os.environ.get("WHATSAPP_ACCESS_TOKEN", "bench-token"),
    )
    serve(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
