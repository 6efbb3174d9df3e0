"""The Cloud API calls zapstream makes: send a text, mark read with the typing indicator.

POST {WHATSAPP_API_URL}/{phone_number_id}/messages with the bearer token (REFERENCE.md §5).
A refusal is a GraphError carrying WhatsApp's `error.code` (§5.4): what to do about it is
decided by that code, never by the HTTP status (send.py's table). A call that gets no answer
raises httpx's TimeoutError or TransportError: whether Meta took it is then unknown.
"""

from __future__ import annotations

import email.utils
import time

import httpx
import msgspec

from zapstream.settings import Settings


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
    """The Cloud API over one shared httpx client; every call has a timeout."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, timeout: float) -> None:
        self.http = http
        self.base = settings.api_url.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {settings.access_token}",
            "Content-Type": "application/json",
        }
        self.timeout = timeout

    async def send_text(
        self, phone_number_id: str, to: str, body: str, *, quote: str = "", callback: str = ""
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
        response = await self._post(phone_number_id, payload)
        try:
            return _sent_decoder.decode(response.content).messages[0].id
        except (msgspec.DecodeError, IndexError) as err:
            # Accepted (2xx) but unreadable: it was probably sent. Treated like no answer.
            raise httpx.DecodingError(f"unreadable send response: {err}") from err

    async def mark_read(self, phone_number_id: str, message_id: str, *, typing: bool) -> None:
        """Mark the customer's message (and those before it) read; show typing if asked."""
        payload: dict[str, object] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing:
            payload["typing_indicator"] = {"type": "text"}
        await self._post(phone_number_id, payload)

    async def _post(self, phone_number_id: str, payload: dict[str, object]) -> httpx.Response:
        response = await self.http.post(
            f"{self.base}/{phone_number_id}/messages",
            content=_encoder.encode(payload),
            headers=self.headers,
            timeout=self.timeout,
        )
        if response.is_success:
            return response
        wait = retry_after(response.headers.get("retry-after"))
        try:
            error = _error_decoder.decode(response.content).error
        except msgspec.DecodeError:
            raise GraphError(None, response.status_code, response.text[:200], wait) from None
        details = error.error_data.details if error.error_data else ""
        title = f"{error.message} ({details})" if details else error.message
        raise GraphError(error.code, response.status_code, title, wait)
