"""A batch of log entries as the sessions model's rows, grouped by the statement writing them.

Times come from the log only: WhatsApp's timestamps and the entries' own ids. A message's
body is read from Meta's message object through a view of the few fields it needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from projections.follower import Item
from zapstream.events import (
    HandoffReleased,
    HandoffRequested,
    MessageReceived,
    ReplyBlocked,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    ReplySuperseded,
    StatusUpdated,
    TurnReady,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Rows:
    """A batch's rows, grouped by the statement that writes them."""

    def __init__(self) -> None:
        self.inbound: list[tuple[Any, ...]] = []
        self.statuses: list[tuple[Any, ...]] = []
        self.turn_messages: list[tuple[Any, ...]] = []
        self.turns_ready: list[tuple[Any, ...]] = []
        self.generated: list[tuple[Any, ...]] = []
        self.outcomes: list[tuple[Any, ...]] = []
        self.outbound: list[tuple[Any, ...]] = []
        self.handoffs: list[tuple[Any, ...]] = []
        self.errors: list[tuple[Any, ...]] = []
        # session id -> (wa_id, customer, phone_number_id), the greatest of each seen
        self.identities: dict[str, tuple[str, str, str]] = {}
        self.sessions: set[str] = set()
        self.turn_keys: set[tuple[str, str]] = set()
        self.refresh_messages: set[str] = set()
        self.refresh_replies: set[str] = set()

    def add(self, item: Item) -> None:
        event = item.event
        match event:
            case None:
                self.errors.append((item.key, item.entry_id, item.error))
            case MessageReceived():
                created = _from_seconds(event.timestamp)
                body = message_body(event.kind, event.data)
                row = (event.message_id, event.session_id, event.kind, body, created)
                self.inbound.append(row)
                self.refresh_messages.add(event.message_id)
                self._session(event.session_id, event.from_, event.customer, event.phone_number_id)
            case StatusUpdated():
                at = _from_seconds(event.timestamp)
                self.statuses.append((event.message_id, event.status, at))
                self.refresh_messages.add(event.message_id)
            case TurnReady():
                ready = _from_ms(item.at_ms)
                count = len(event.message_ids)
                self.turns_ready.append((event.session_id, event.turn_id, count, ready))
                for wamid in event.message_ids:
                    self.turn_messages.append((wamid, event.session_id, event.turn_id))
                    self.refresh_messages.add(wamid)
                self._session(event.session_id, "", event.customer, event.phone_number_id)
            case ReplyGenerated():
                at = _from_ms(item.at_ms)
                self.generated.append(
                    (event.reply_id, event.session_id, event.turn_id, event.body, event.tokens, at)
                )
                self.refresh_replies.add(event.reply_id)
                self._turn(event.session_id, event.turn_id)
                self._session(event.session_id, "", event.customer, event.phone_number_id)
            case ReplySent():
                at = _from_ms(item.at_ms)
                self._outcome(event.reply_id, event.session_id, event.turn_id, "sent", at)
                for wamid in dict.fromkeys(event.wamids or [event.message_id]):
                    if wamid:
                        row = (wamid, event.session_id, event.reply_id, event.turn_id, at)
                        self.outbound.append(row)
                        self.refresh_messages.add(wamid)
            case ReplyFailed():
                at = _from_ms(item.at_ms)
                self._outcome(
                    event.reply_id,
                    event.session_id,
                    event.turn_id,
                    "failed",
                    at,
                    event.code,
                    event.reason,
                )
            case ReplyBlocked():
                at = _from_ms(item.at_ms)
                self._outcome(
                    event.reply_id,
                    event.session_id,
                    event.turn_id,
                    "blocked",
                    at,
                    None,
                    event.reason,
                )
            case ReplySuperseded():
                at = _from_ms(item.at_ms)
                self._outcome(event.reply_id, event.session_id, event.turn_id, "superseded", at)
            case HandoffRequested() | HandoffReleased():
                kind = "requested" if isinstance(event, HandoffRequested) else "released"
                at = _from_ms(item.at_ms)
                self.handoffs.append((event.session_id, item.entry_id, kind, event.turn_id, at))
                self._session(event.session_id, "", event.customer, event.phone_number_id)
            case _:
                pass  # message.rejected and types this model does not read: checkpoint only

    def _outcome(
        self,
        reply_id: str,
        session_id: str,
        turn_id: str,
        outcome: str,
        at: datetime,
        code: int | None = None,
        reason: str = "",
    ) -> None:
        self.outcomes.append((reply_id, session_id, turn_id, outcome, at, code, reason))
        self._turn(session_id, turn_id)
        self._session(session_id, "", "", "")

    def _turn(self, session_id: str, turn_id: str) -> None:
        self.turn_keys.add((session_id, turn_id))

    def _session(self, session_id: str, wa_id: str, customer: str, phone_number_id: str) -> None:
        if not session_id:
            return
        self.sessions.add(session_id)
        known = self.identities.get(session_id, ("", "", ""))
        self.identities[session_id] = (
            max(known[0], wa_id),
            max(known[1], customer),
            max(known[2], phone_number_id),
        )


class _Part(msgspec.Struct, frozen=True):
    body: str = ""  # a text's
    caption: str = ""  # a media message's


class _MessageView(msgspec.Struct, frozen=True):
    """The parts of Meta's message object a body is read from; the rest is ignored."""

    text: _Part | None = None
    image: _Part | None = None
    video: _Part | None = None
    document: _Part | None = None


_message_view = msgspec.json.Decoder(_MessageView)


def message_body(kind: str, data: str) -> str:
    """A text's body or a media message's caption; '' for anything else or unreadable."""
    try:
        view = _message_view.decode(data)
    except msgspec.DecodeError:
        return ""
    match kind:
        case "text":
            return view.text.body if view.text else ""
        case "image" | "video" | "document":
            part: _Part | None = getattr(view, kind)
            return part.caption if part else ""
        case _:
            return ""


def _from_seconds(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def to_columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as columns: one array parameter per column, for unnest()."""
    found: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(found, row, strict=True):
            column.append(value)
    return found
