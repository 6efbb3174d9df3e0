"""What the peers answer: the rules responder's English answer picked by keyword, as the old
design's task did, and the Graph API request that carries it. Shared by the Celery peer and
the direct ceiling."""

from __future__ import annotations

import re
from typing import Any

from processors.rules import Rules


def pick_answer(rules: Rules, text: str) -> str:
    """The English answer of the first intent with a keyword among the text's words."""
    words = set(re.findall(r"\w+", text.lower()))
    for intent in rules.intents:
        if words.intersection(intent.keywords):
            return intent.answer.en
    return rules.fallback.en


def text_messages(payload: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(phone_number_id, sender, text) of every text message of a notification."""
    found = []
    for entry in payload.get("entry", []):
        for change in entry.get("changes", []):
            value = change.get("value", {})
            business = value.get("metadata", {}).get("phone_number_id", "")
            for message in value.get("messages", []):
                if message.get("type") == "text":
                    found.append((business, message["from"], message["text"]["body"]))
    return found


def reply_request(sender: str, answer: str) -> dict[str, Any]:
    """The Graph API's text message to `sender`."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": f"+{sender}",
        "type": "text",
        "text": {"body": answer, "preview_url": False},
    }
