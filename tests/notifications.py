"""Webhook bodies for tests: the shared fixtures, and notifications made with current
timestamps and unique wamids, serialised as Meta does (compact, non-ASCII escaped)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from zapstream.signing import sign

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "whatsapp"
SECRET = "test-app-secret"
NEXT_SECRET = "test-app-secret-next"
VERIFY_TOKEN = "test-verify-token"
BUSINESS = "100000000000001"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(body, secret), "Content-Type": "application/json"}


def wire(document: object) -> bytes:
    """Serialise as Meta does: compact JSON, non-ASCII as \\uXXXX escapes."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def envelope(value: dict[str, object], phone_number_id: str = BUSINESS) -> dict[str, object]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550009999", "phone_number_id": phone_number_id},
        **value,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "200000000000002", "changes": [{"value": value, "field": "messages"}]}],
    }


def text_message(
    wamid: str, sender: str, body: str, timestamp: int | None = None
) -> dict[str, object]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "type": "text",
        "text": {"body": body},
    }


def messages_notification(*messages: dict[str, object], phone_number_id: str = BUSINESS) -> bytes:
    senders = sorted({str(m["from"]) for m in messages if "from" in m})
    contacts = [{"profile": {"name": f"Customer {s[-4:]}"}, "wa_id": s} for s in senders]
    return wire(envelope({"contacts": contacts, "messages": list(messages)}, phone_number_id))


def status_notification(
    wamid: str, status: str, recipient: str, timestamp: int | None = None
) -> bytes:
    item = {
        "id": wamid,
        "status": status,
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "recipient_id": recipient,
    }
    return wire(envelope({"statuses": [item]}))
