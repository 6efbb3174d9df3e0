"""The peer: the old design's webhook, a FastAPI endpoint that hands each body to Celery.

    BENCH_BROKER_URL=redis://127.0.0.1:6379/7 WHATSAPP_APP_SECRET=... \\
        python bench/ingest_peers/celery_app.py --port PORT

It verifies the signature over the raw body, parses the JSON, and enqueues it with
`process_notification.delay(payload)` on a Redis broker; no Celery worker runs, so what is
measured is the webhook's side alone: verify, parse, enqueue, answer.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
from typing import Any

from celery import Celery
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from serving import add_server_options, serve


def create_app(broker_url: str, app_secret: str) -> FastAPI:
    """The FastAPI app and its Celery task, written as the old design wrote them."""
    celery = Celery("zapstream_old", broker=broker_url)
    celery.conf.broker_connection_retry_on_startup = True

    @celery.task(name="process_notification")  # type: ignore[untyped-decorator]
    def process_notification(payload: dict[str, Any]) -> None:
        """The old design's worker-side entry point; no worker runs it in the bench."""

    api = FastAPI()
    key = app_secret.encode("utf-8")

    @api.post("/webhook/whatsapp")
    async def receive(request: Request) -> dict[str, str]:
        body = await request.body()
        header = request.headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode("ascii"), header.encode("utf-8")):
            raise HTTPException(status_code=401, detail="invalid signature")
        payload = json.loads(body)
        process_notification.delay(payload)
        return {"status": "queued"}

    @api.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "ok\n"

    return api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_options(parser)
    args = parser.parse_args()
    app = create_app(os.environ["BENCH_BROKER_URL"], os.environ["WHATSAPP_APP_SECRET"])
    serve(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
