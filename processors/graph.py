"""The Cloud API calls zapstream makes: send a text, mark read with the typing indicator.

POST {WHATSAPP_API_URL}/{phone_number_id}/messages with the bearer token (REFERENCE.md §5).
A refusal is a GraphError carrying WhatsApp's `error.code` (§5.4): what to do about it is
decided by that code, never by the HTTP status (send.py's table). A call that never reached
Meta raises GraphUnreachable (nothing was sent); one that got no answer, or one that cannot
be read, raises GraphNoAnswer: whether Meta took it is then unknown.

The calls go over aiohttp, not httpx: both are asyncio clients with keep-alive pools, and
bench/e2e measured httpx at about four times aiohttp's CPU per request, on the path every
reply takes twice (mark read, send). httpx stays for the calls that are not on it (the AI,
the handoff webhook).
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from zapstream.settings import Settings

# Connections kept to the Cloud API per process: the send and respond groups' concurrency.
MAX_CONNECTIONS = 100


class GraphUnreachable(Exception):
    """The call never reached Meta (no connection): nothing was sent."""


class GraphNoAnswer(Exception):
    """The call may have reached Meta, but no readable answer came back: in doubt."""


class GraphError(Exception):
    """Meta answered, and refused: nothing was sent."""

    def __init__(self, code: int | None, status: int, title: str, retry_after: float = 0.0) -> None:
        self.code = code  # WhatsApp's error.code; None when the answer carried none
        self.status = status  # the HTTP status, for the log only
        self.title = title
        self.retry_after = retry_after  # from a Retry-After header, in seconds
        super().__init__(f"WhatsApp error {code} (HTTP {status}): {title}")


class _ErrorData(msgspec.Struct, frozen=True):
    details: str = ""


class _Error(msgspec.Struct, frozen=True):
    code: int | None = None
    message: str = ""
    error_data: _ErrorData | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _Error


class _SentMessage(msgspec.Struct, frozen=True):
    id: str


class _SentBody(msgspec.Struct, frozen=True):
    messages: list[_SentMessage]


_error_decoder = msgspec.json.Decoder(_ErrorBody)
_sent_decoder = msgspec.json.Decoder(_SentBody)
_encoder = msgspec.json.Encoder()


def international(customer: str) -> str:
    """`to` in international form: WhatsApp's `from` has no `+`, and without one Meta would
    prepend the business number's country code (§5.1)."""
    return customer if customer.startswith("+") else f"+{customer}"


def retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


class Graph:
    """The Cloud API over one aiohttp session; every call has a timeout."""

    def __init__(self, http: aiohttp.ClientSession, settings: Settings) -> None:
        self.http = http
        self.base = settings.api_url.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {settings.access_token}",
            "Content-Type": "application/json",
        }

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Graph]:
        """A Graph with its own connection pool, closed on the way out."""
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as http:
            yield cls(http, settings)

    async def send_text(
        self,
        phone_number_id: str,
        to: str,
        body: str,
        *,
        timeout: float,
        quote: str = "",
        callback: str = "",
    ) -> str:
        """Send one text; its wamid. `quote` is the wamid answered, `callback` comes back as
        `biz_opaque_callback_data` in the message's status webhooks."""
        payload: dict[str, object] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": international(to),
            "type": "text",
            "text": {"body": body, "preview_url": False},
        }
        if quote:
            payload["context"] = {"message_id": quote}
        if callback:
            payload["biz_opaque_callback_data"] = callback
        content = await self._post(phone_number_id, payload, timeout)
        try:
            return _sent_decoder.decode(content).messages[0].id
        except (msgspec.DecodeError, IndexError) as err:
            # Accepted (2xx) but unreadable: it was probably sent. Treated like no answer.
            raise GraphNoAnswer(f"unreadable send response: {err}") from err

    async def mark_read(
        self, phone_number_id: str, message_id: str, *, typing: bool, timeout: float
    ) -> None:
        """Mark the customer's message (and those before it) read; show typing if asked."""
        payload: dict[str, object] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing:
            payload["typing_indicator"] = {"type": "text"}
        await self._post(phone_number_id, payload, timeout)

    async def _post(
        self, phone_number_id: str, payload: dict[str, object], timeout: float
    ) -> bytes:
        """The answer's body once Meta accepted the call; GraphError when it refused."""
        try:
            async with self.http.post(
                f"{self.base}/{phone_number_id}/messages",
                data=_encoder.encode(payload),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                content = await response.read()
                status, wait = response.status, retry_after(response.headers.get("retry-after"))
        except aiohttp.ClientConnectorError as err:
            raise GraphUnreachable(f"{type(err).__name__}: {err}") from err
        except (TimeoutError, aiohttp.ClientError) as err:
            raise GraphNoAnswer(f"{type(err).__name__}: {err}") from err
        if 200 <= status < 300:
            return content
        try:
            error = _error_decoder.decode(content).error
        except msgspec.DecodeError:
            text = content[:200].decode("utf-8", "replace")
            raise GraphError(None, status, text, wait) from None
        details = error.error_data.details if error.error_data else ""
        title = f"{error.message} ({details})" if details else error.message
        raise GraphError(error.code, status, title, wait)
