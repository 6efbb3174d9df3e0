"""The peer: the old design end to end, a FastAPI webhook whose Celery task sends the reply.

    export PYTHONPATH=bench BENCH_BROKER_URL=redis://127.0.0.1:6379/9 WHATSAPP_APP_SECRET=... \\
        WHATSAPP_API_URL=http://127.0.0.1:P/v25.0 WHATSAPP_ACCESS_TOKEN=...
    python bench/e2e_peers/celery_app.py --port PORT            # the webhook
    celery -A e2e_peers.celery_app worker --pool prefork ...     # the worker

The webhook is bench/ingest_peers/celery_app.py's: it verifies the signature over the raw body,
parses the JSON and calls `.delay(payload)` on a Redis broker. Here a worker runs the task: for
each text message of the notification it picks an answer by keyword from the rules responder's
rules.yaml and POSTs it to the Graph API with a synchronous httpx client, as the old design's
task did. Status notifications are enqueued as well (the webhook cannot tell them apart without
parsing deeper) and find nothing to answer.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import threading
from typing import Any

import httpx
from celery import Celery
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from e2e_peers.answers import pick_answer, reply_request, text_messages
from ingest_peers.serving import add_server_options, serve
from processors.rules import load_rules
from zapstream.signing import sign

ANSWER_NOTIFICATION = "bench.answer_notification"
HTTP_TIMEOUT_S = 10.0


def create_celery(broker_url: str, api_url: str, access_token: str) -> Celery:
    """The Celery app and its one task; each worker process opens its own HTTP client."""
    app = Celery("bench_e2e_peer", broker=broker_url)
    app.conf.broker_connection_retry_on_startup = True
    rules = load_rules()
    headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
    clients: dict[int, httpx.Client] = {}  # by process id: prefork children open their own
    lock = threading.Lock()

    def client() -> httpx.Client:
        with lock:
            pid = os.getpid()
            if pid not in clients:
                clients[pid] = httpx.Client(timeout=HTTP_TIMEOUT_S)
            return clients[pid]

    @app.task(name=ANSWER_NOTIFICATION, shared=False)  # type: ignore[untyped-decorator]
    def answer_notification(payload: dict[str, Any]) -> None:
        for business, sender, text in text_messages(payload):
            reply = reply_request(sender, pick_answer(rules, text))
            response = client().post(
                f"{api_url.rstrip('/')}/{business}/messages", json=reply, headers=headers
            )
            response.raise_for_status()

    return app


def create_api(celery: Celery, app_secret: str) -> FastAPI:
    """The webhook, written as the old design wrote it (bench/ingest_peers/celery_app.py)."""
    answer_notification = celery.tasks[ANSWER_NOTIFICATION]
    api = FastAPI()

    @api.post("/webhook/whatsapp")
    async def receive(request: Request) -> dict[str, str]:
        body = await request.body()
        header = request.headers.get("x-hub-signature-256", "")
        if not hmac.compare_digest(sign(body, app_secret).encode(), header.encode()):
            raise HTTPException(status_code=401, detail="invalid signature")
        answer_notification.delay(json.loads(body))
        return {"status": "queued"}

    @api.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "ok\n"

    return api


def celery_from_environment() -> Celery:
    return create_celery(
        os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9"),
        os.environ.get("WHATSAPP_API_URL", "http://127.0.0.1:9/v25.0"),
        os.environ.get("WHATSAPP_ACCESS_TOKEN", "bench-token"),
    )


# What `celery -A e2e_peers.celery_app worker` loads.
app = celery_from_environment()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_options(parser)
    args = parser.parse_args()
    serve(create_api(app, os.environ["WHATSAPP_APP_SECRET"]), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
