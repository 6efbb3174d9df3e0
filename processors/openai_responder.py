"""The `openai` responder: any OpenAI-compatible chat completions endpoint (OpenAI, Ollama,
vLLM) over httpx, with a bounded context, a deadline per request and retries.

A customer who asks for a person is handed over whether the model says so (the `[HANDOFF]`
marker of the system prompt) or the customer's own words match rules.yaml's `human` keywords.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

import httpx
import msgspec
import structlog

from processors.responder import Answer, Prompt
from processors.rules import Rules, asks_for_human, load_rules

log = structlog.get_logger()

HANDOFF_MARKER = "[HANDOFF]"
SYSTEM_PROMPT = (
    "You are a helpful WhatsApp assistant for a business. Answer briefly and plainly, in the "
    "language the customer writes in. If the customer asks to talk to a human, reply with a "
    f"short acknowledgement and include the marker {HANDOFF_MARKER} in your reply."
)
# A Retry-After longer than this is not waited for in full: the runtime's backoff takes over.
MAX_RETRY_AFTER_S = 30.0
# How much of an error response's body goes into the exception.
BODY_EXCERPT = 200

_MARKER = re.compile(r"[ \t]*\[\s*HANDOFF\s*\]", re.IGNORECASE)
_ROLES = {"customer": "user", "assistant": "assistant"}


class CompletionError(Exception):
    """The endpoint gave no usable answer: a refused request, or none left after retries."""


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    content: str


class _ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    messages: list[ChatMessage]


# Views of the response: only the fields read, the rest ignored.
class _ReplyMessage(msgspec.Struct, frozen=True, kw_only=True):
    content: str | None = None


class _Choice(msgspec.Struct, frozen=True, kw_only=True):
    message: _ReplyMessage


class _Usage(msgspec.Struct, frozen=True, kw_only=True):
    total_tokens: int | None = None


class _Completion(msgspec.Struct, frozen=True, kw_only=True):
    choices: list[_Choice] = []
    usage: _Usage | None = None


_encoder = msgspec.json.Encoder()
_completion_decoder = msgspec.json.Decoder(_Completion)


class OpenAIResponder:
    """Answers with a chat completion; one httpx client of its own, closed by aclose()."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        system_prompt: str = SYSTEM_PROMPT,
        timeout: float = 30.0,
        attempts: int = 3,
        retry_delay: float = 0.5,
        max_context: int = 20,
        max_context_chars: int = 8000,
        rules: Rules | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.model = model
        self.system_prompt = system_prompt
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.max_context = max_context
        self.max_context_chars = max_context_chars
        self.rules = rules or load_rules()
        self._api_key = api_key
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.AsyncClient | None = None  # opened at the first call

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def answer(self, prompt: Prompt) -> Answer:
        """The model's answer to the prompt; CompletionError if none could be had."""
        started = time.perf_counter()
        request = _ChatRequest(model=self.model, messages=self.chat_messages(prompt))
        completion, attempts = await self._complete(_encoder.encode(request))
        content = completion.choices[0].message.content if completion.choices else None
        body = _MARKER.sub("", content or "").strip()
        if not body:
            raise CompletionError(f"{self.url} answered with no content")
        marked = _MARKER.search(content or "") is not None
        handoff = marked or asks_for_human(prompt.messages, self.rules)
        usage = completion.usage
        tokens = (usage.total_tokens or 0) if usage is not None else 0
        log.info(
            "llm_answered",
            tokens=tokens,
            attempts=attempts,
            seconds=round(time.perf_counter() - started, 3),
            handoff=handoff,
        )
        return Answer(body=body, tokens=tokens, handoff=handoff)

    def chat_messages(self, prompt: Prompt) -> list[ChatMessage]:
        """System prompt, the latest earlier turns within both bounds, then the new messages."""
        recent = prompt.context[-self.max_context :] if self.max_context > 0 else []
        earlier: list[ChatMessage] = []
        chars = 0
        for item in reversed(recent):  # newest first: the oldest are dropped
            turn = _chat_turn(item)
            chars += len(turn.content)
            if chars > self.max_context_chars:
                break
            earlier.append(turn)
        earlier.reverse()
        return [
            ChatMessage(role="system", content=self.system_prompt),
            *earlier,
            ChatMessage(role="user", content="\n".join(prompt.messages)),
        ]

    async def _complete(self, body: bytes) -> tuple[_Completion, int]:
        """POST the request, retrying 429, 5xx, timeouts and network errors with backoff."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout))
        problem = ""
        for attempt in range(1, self.attempts + 1):
            wait = self.retry_delay * 2 ** (attempt - 1)
            try:
                # httpx's timeout bounds each read; this bounds the whole request.
                async with asyncio.timeout(self.timeout):
                    response = await self._client.post(
                        self.url, content=body, headers=self._headers
                    )
            except (TimeoutError, httpx.TimeoutException):
                problem = f"no answer within {self.timeout:g}s"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        return _completion_decoder.decode(response.content), attempt
                    except msgspec.DecodeError as err:
                        raise CompletionError(
                            f"{self.url} answered HTTP {status} with no chat completion ({err}): "
                            f"{self._excerpt(response)}"
                        ) from err
                if status != 429 and status < 500:
                    raise CompletionError(
                        f"{self.url} refused the request: HTTP {status}: {self._excerpt(response)}"
                    )
                problem = f"HTTP {status}: {self._excerpt(response)}"
                wait = _retry_after(response, default=wait)
            if attempt < self.attempts:
                log.warning("llm_retrying", attempt=attempt, problem=problem, retry_in=wait)
                await asyncio.sleep(wait)
        raise CompletionError(
            f"{self.url} gave no answer in {self.attempts} attempts (last: {problem})"
        )

    def _excerpt(self, response: httpx.Response) -> str:
        """The start of a response's body on one line, never with the API key in it."""
        text = " ".join(response.text[:BODY_EXCERPT].split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text or "(empty body)"


def _chat_turn(item: str) -> ChatMessage:
    """`customer: hi` -> a user message `hi`; `assistant: ...` -> an assistant message."""
    speaker, sep, text = item.partition(": ")
    role = _ROLES.get(speaker) if sep else None
    if role is None:
        return ChatMessage(role="user", content=item)
    return ChatMessage(role=role, content=text)


def _retry_after(response: httpx.Response, *, default: float) -> float:
    """A numeric Retry-After in seconds, at most MAX_RETRY_AFTER_S; else `default`."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return default  # absent, or an HTTP date
    if math.isnan(seconds) or seconds < 0:
        return default
    return min(seconds, MAX_RETRY_AFTER_S)
