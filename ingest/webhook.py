"""The WhatsApp webhook: GET handshake; POST read bounded, verified, decoded, appended.

This module alone maps failures to HTTP answers: SignatureError 401, PayloadError 400, a body
past the cap 413, and a Redis that cannot take the append in time 503 (Meta retries; dedup
makes the retry append each event once).
"""

from __future__ import annotations

import hmac
import time

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from ingest.append import AppendBatcher
from ingest.payload import PayloadError, decode_notification
from ingest.signature import SignatureError, verify_signature
from zapstream.events import TYPE_NAMES, MessageRejected
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.topology import Topology

log = structlog.get_logger()


class IngestContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the webhook's handlers use, opened by the app's lifespan."""

    redis: Redis
    appender: AppendBatcher
    settings: Settings
    topology: Topology
    metrics: Metrics


class Received(msgspec.Struct, frozen=True, kw_only=True):
    """The POST's answer body: how many events were appended and how many were duplicates."""

    appended: int
    duplicates: int


_received_encoder = msgspec.json.Encoder()


async def verify_subscription(request: Request) -> Response:
    """Meta's handshake: echo `hub.challenge` verbatim when mode and token match."""
    ingest: IngestContext = request.state.ingest
    params = request.query_params
    token = params.get("hub.verify_token", "")
    if (
        params.get("hub.mode") == "subscribe"
        and ingest.settings.verify_token
        and _same(token, ingest.settings.verify_token)
        and "hub.challenge" in params
    ):
        return PlainTextResponse(params["hub.challenge"])
    log.warning("webhook_verification_refused", mode=params.get("hub.mode"))
    return PlainTextResponse("verification refused\n", status_code=403)


class _Answer(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def receive_notification(scope: Scope, receive: Receive, send: Send) -> None:
    """POST: a plain ASGI app, since every notification takes this path (no Request or
    Response objects on it)."""
    ingest: IngestContext = scope["state"]["ingest"]
    answer = await _receive(scope, receive, ingest)
    ingest.metrics.answered(answer.status).inc()
    headers = [
        (b"content-type", answer.content_type),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def _receive(scope: Scope, receive: Receive, ingest: IngestContext) -> _Answer:
    limit = ingest.topology.webhook.max_body
    declared, signature = "", None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value.decode("latin-1")
        elif name == b"x-hub-signature-256":
            signature = value.decode("latin-1")
    try:
        body = await _read_bounded(receive, declared, limit)
    except _BodyTooLarge:
        log.warning("webhook_body_too_large", limit=limit)
        return _Answer(413, f"body larger than {limit} bytes\n".encode())
    except _ClientGone:
        return _Answer(400, b"client disconnected\n")
    try:
        verify_signature(body, signature, ingest.settings.app_secrets)
    except SignatureError as err:
        log.warning("webhook_signature_rejected", reason=str(err))
        return _Answer(401, b"invalid signature\n")
    try:
        items = decode_notification(body)
    except PayloadError as err:
        log.warning("webhook_payload_rejected", reason=str(err))
        return _Answer(400, f"{err}\n".encode())
    started = time.perf_counter()
    try:
        results = await ingest.appender.append(items, ingest.topology.webhook.append_timeout)
    except (RedisError, OSError, TimeoutError) as err:
        # Some events may be in the log already; Meta's retry appends the rest, each once.
        log.error("webhook_append_failed", error=f"{type(err).__name__}: {err}", events=len(items))
        return _Answer(503, b"log unavailable, retry later\n")
    ingest.metrics.append_seconds.observe(time.perf_counter() - started)
    appended = 0
    for item, result in zip(items, results, strict=True):
        event = item.event
        message_id = getattr(event, "message_id", "")
        if result is None:
            ingest.metrics.duplicate(item.stream).inc()
            log.debug("event_duplicate", message_id=message_id, stream=item.stream)
            continue
        appended += 1
        type_name = TYPE_NAMES[type(event)]
        ingest.metrics.appended(type_name).inc()
        if isinstance(event, MessageRejected):
            log.warning(
                "message_rejected",
                message_id=message_id,
                session_id=result.session_id,
                entry_id=result.entry_id,
                reason=event.reason,
            )
        else:
            log.debug(
                "event_appended",
                type=type_name,
                message_id=message_id,
                session_id=result.session_id,
                entry_id=result.entry_id,
            )
    answer = Received(appended=appended, duplicates=len(items) - appended)
    return _Answer(200, _received_encoder.encode(answer), b"application/json")


async def _read_bounded(receive: Receive, declared: str, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes before it is read whole."""
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
