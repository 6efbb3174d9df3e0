"""An OpenAI-compatible chat completions stand-in: a real HTTP server on 127.0.0.1 that records
each request and answers as scripted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import Webhook

MODEL = "llama3.2"


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One scripted answer of the stand-in; `hang`: none until the test ends."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = {}
    hang: bool = False


HANG = Reply(hang=True)


def completion(content: str | None, tokens: int | None = None) -> Reply:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": ""}
        ],
    }
    if tokens is not None:
        body["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": tokens}
    return Reply(json=body)


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    headers: dict[str, str]
    json: dict[str, Any]

    @property
    def messages(self) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in self.json["messages"]]


class ChatStandIn:
    """An OpenAI-compatible /v1/chat/completions on uvicorn that records each request and
    answers from `script`: the next Reply of a list (the last one repeats), or a function."""

    def __init__(self, script: list[Reply] | Callable[[Recorded], Reply]) -> None:
        self.script = script
        self.requests: list[Recorded] = []
        self.released = asyncio.Event()  # set at teardown: hanging answers end
        app = Starlette(routes=[Route("/v1/chat/completions", self.complete, methods=["POST"])])
        self.server = Webhook(app)

    async def complete(self, request: Request) -> Response:
        recorded = Recorded(
            headers=dict(request.headers), json=msgspec.json.decode(await request.body())
        )
        self.requests.append(recorded)
        if callable(self.script):
            reply = self.script(recorded)
        else:
            reply = self.script[min(len(self.requests), len(self.script)) - 1]
        if reply.hang:
            await self.released.wait()
            return Response(status_code=503)
        return Response(
            msgspec.json.encode(reply.json),
            status_code=reply.status,
            headers=reply.headers,
            media_type="application/json",
        )
