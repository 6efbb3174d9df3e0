"""A stand-in for WhatsApp on loopback: the Graph API that takes replies, and Meta's side of
the webhook that reports their statuses. Used by `zapstream chat`, the tests and bench/e2e.

GraphStandIn is a plain ASGI app answering POST /<version>/<phone_number_id>/messages. It
records every request, answers as scripted (by default: accepted, with a new wamid), and, when
given a webhook URL and app secret, posts the `sent` status of each accepted message back to
zapstream's webhook, signed, with the `biz_opaque_callback_data` it was sent with, as Meta does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from starlette.types import Receive, Scope, Send

from zapstream.signing import sign

log = structlog.get_logger()

BUSINESS_DISPLAY = "15550009999"
WABA_ID = "200000000000002"


def wire(document: object) -> bytes:
    """Serialise as Meta does: compact JSON, non-ASCII as \\uXXXX escapes."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def notification(value: dict[str, object], phone_number_id: str) -> bytes:
    """A `messages` field notification around `value`, as Meta posts it."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": BUSINESS_DISPLAY, "phone_number_id": phone_number_id},
        **value,
    }
    document = {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}],
    }
    return wire(document)


def text_notification(
    phone_number_id: str, sender: str, wamid: str, text: str, name: str = "Customer"
) -> bytes:
    message = {
        "from": sender,
        "id": wamid,
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    contact = {"profile": {"name": name}, "wa_id": sender}
    return notification({"contacts": [contact], "messages": [message]}, phone_number_id)


def status_notification(
    phone_number_id: str, wamid: str, status: str, recipient: str, callback: str = ""
) -> bytes:
    item: dict[str, object] = {
        "id": wamid,
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if callback:
        item["biz_opaque_callback_data"] = callback
    return notification({"statuses": [item]}, phone_number_id)


@dataclass(frozen=True)
class Answer:
    """A scripted answer: status, JSON body, headers; `hang` never answers (until closed);
    `drop` takes the message (and reports its statuses) but never answers the POST."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    drop: bool = False
    delay: float = 0.0  # an accepted message: seconds before the answer (Meta being slow)


def error(code: int, message: str = "", status: int = 400, **headers: str) -> Answer:
    """A Graph API error answer carrying WhatsApp's error code."""
    body = {
        "error": {
            "message": f"({code}) {message or 'error'}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message or "error"},
            "fbtrace_id": "AbCdEfGh",
        }
    }
    return Answer(status=status, body=body, headers=headers)


@dataclass(frozen=True)
class Received:
    """One request the stand-in got."""

    phone_number_id: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.time() on arrival
    wamid: str = ""  # the wamid it answered with, when accepted

    @property
    def is_text(self) -> bool:
        return self.body.get("type") == "text"

    @property
    def text(self) -> str:
        return str(self.body.get("text", {}).get("body", ""))

    @property
    def to(self) -> str:
        return str(self.body.get("to", ""))

    @property
    def callback(self) -> str:
        return str(self.body.get("biz_opaque_callback_data", ""))


Script = Callable[[Received], Answer | None]


class GraphStandIn:
    """The Graph API's /messages endpoint, recording, scripted, reporting statuses back."""

    def __init__(
        self,
        *,
        webhook_url: str = "",
        app_secret: str = "",
        statuses: tuple[str, ...] = ("sent",),
        script: Script | None = None,
    ) -> None:
        self.webhook_url = webhook_url
        self.app_secret = app_secret
        self.statuses = statuses
        self.script = script  # consulted first; None from it means the queue or the default
        self.queue: list[Answer] = []  # answers for the next requests, in order
        self.received: list[Received] = []
        self.listeners: list[Callable[[Received], None]] = []
        self._ids = itertools.count(1)
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # aiohttp, as zapstream's own Cloud API client: in bench/e2e this process shares the
        # CPUs with the path under test, and httpx took four times the CPU per status.
        self._http: aiohttp.ClientSession | None = None

    @property
    def texts(self) -> list[Received]:
        """The accepted text messages, in arrival order."""
        return [r for r in self.received if r.is_text and r.wamid]

    async def close(self) -> None:
        self._release.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._http is not None:
            await self._http.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        parts = scope["path"].strip("/").split("/")
        if scope["method"] != "POST" or len(parts) < 2 or parts[-1] != "messages":
            await _respond(send, 404, {"error": {"message": "unknown route", "code": 100}})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            await _respond(send, 400, {"error": {"message": "bad JSON", "code": 100}})
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Received(phone_number_id=parts[-2], headers=headers, body=body, at=time.time())
        answer = (self.script(request) if self.script else None) or (
            self.queue.pop(0) if self.queue else None
        )
        if answer is None or answer.drop or answer.delay:
            answer = answer or Answer()
            reply: dict[str, Any] = {"success": True}
            if body.get("type") == "text":
                wamid = f"wamid.STANDIN{next(self._ids):08d}"
                request = dataclasses.replace(request, wamid=wamid)
                reply = {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": request.to, "wa_id": request.to.lstrip("+")}],
                    "messages": [{"id": wamid}],
                }
            self._record(request)
            if answer.drop:
                self._report(request)
                await self._release.wait()  # taken, never answered: the sender cannot know
                return
            if answer.delay:
                await asyncio.sleep(answer.delay)  # simulated latency, part of the script
            try:
                await _respond(send, 200, reply)
            finally:  # Meta reports the status whether or not its answer reached the caller
                self._report(request)
            return
        self._record(request)
        if answer.hang:
            await self._release.wait()
            return
        await _respond(send, answer.status, answer.body or {}, answer.headers)

    def _record(self, request: Received) -> None:
        self.received.append(request)
        for listener in self.listeners:
            listener(request)

    def _report(self, request: Received) -> None:
        """Post the message's statuses back to the webhook, as Meta would, in the background."""
        if not (request.wamid and self.webhook_url and self.app_secret):
            return
        task = asyncio.get_running_loop().create_task(self._post_statuses(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_statuses(self, request: Received) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for status in self.statuses:
            body = status_notification(
                request.phone_number_id,
                request.wamid,
                status,
                request.to.lstrip("+"),
                request.callback,
            )
            headers = {
                "X-Hub-Signature-256": sign(body, self.app_secret),
                "Content-Type": "application/json",
            }
            for attempt in range(20):  # as Meta: retried until the webhook takes it
                try:
                    async with self._http.post(
                        self.webhook_url, data=body, headers=headers
                    ) as response:
                        await response.read()
                        if response.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))  # Meta's retry backoff
            else:
                log.warning("standin_status_undelivered", wamid=request.wamid, status=status)


async def lifespan(receive: Receive, send: Send) -> None:
    """The ASGI lifespan protocol for an app with nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    content = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})
