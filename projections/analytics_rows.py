"""The rows of `events`, the analytics model's one table: what each event lands as.

Every event type lands, one row per log entry: its stream key, entry id, the entry id's
milliseconds `at_ms` as the log's own clock and its sequence number `seq`, and the event's
fields the analytics read (None where the event has no such field). `event_row` builds the
row of a decoded event; `fast_row` builds the same row, as JSON, straight from the entry's
fields without building the event (AnalyticsTarget.decode_entry), and leaves to the
follower's `decode` every entry it is not sure to read exactly as that would. Rows are JSON
encoded by msgspec, for DuckDB to parse in bulk (see analytics_sql.INSERT_EVENTS).
"""

from __future__ import annotations

from typing import Any

import msgspec

from projections.follower import Item
from projections.layouts import LAYOUTS, Layout
from zapstream.envelope import UnknownEventError, upcast_fields
from zapstream.events import (
    TYPE_NAMES,
    HandoffReleased,
    HandoffRequested,
    MessageReceived,
    MessageRejected,
    ReplyBlocked,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    ReplySuperseded,
    StatusUpdated,
    TurnReady,
)


class Row(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event as `events` holds it; None where the event has no such field."""

    entry_id: str
    stream_key: str
    stream: str
    type: str
    session_id: str
    at_ms: int  # the entry id's milliseconds: when the log took the event
    seq: int  # the entry id's sequence number
    message_id: str | None = None
    kind: str | None = None
    status: str | None = None
    turn_id: str | None = None
    reply_id: str | None = None
    ts: int | None = None  # WhatsApp's timestamp (Unix seconds)
    tokens: int | None = None
    code: int | None = None  # WhatsApp's error code (reply.failed, a failed status)
    reason: str | None = None
    message_ids: list[str] | None = None
    wamids: list[str] | None = None
    phone_number_id: str | None = None
    customer: str | None = None


class _StatusError(msgspec.Struct, frozen=True, kw_only=True):
    code: int | None = None


class _StatusData(msgspec.Struct, frozen=True, kw_only=True):
    """The part of Meta's status object read here: the failure's code."""

    errors: list[_StatusError] = []


row_encoder = msgspec.json.Encoder()
_status_decoder = msgspec.json.Decoder(_StatusData)


def event_row(item: Item) -> Row:
    """The `events` row of a decoded entry; every event type lands, with what analytics reads."""
    event = item.event
    assert event is not None
    ms, _, seq = item.entry_id.partition("-")
    row = Row(
        entry_id=item.entry_id,
        stream_key=item.key,
        stream=item.stream,
        type=TYPE_NAMES[type(event)],
        session_id=event.session_id,
        at_ms=int(ms),
        seq=int(seq or 0),
    )
    replace = msgspec.structs.replace
    match event:
        case MessageReceived():
            return replace(
                row,
                message_id=event.message_id,
                kind=event.kind,
                ts=event.timestamp,
                phone_number_id=event.phone_number_id,
                customer=event.customer,
            )
        case MessageRejected():
            return replace(
                row,
                message_id=event.message_id,
                reason=event.reason,
                ts=event.timestamp,
                phone_number_id=event.phone_number_id,
                customer=event.customer,
            )
        case StatusUpdated():
            return replace(
                row,
                message_id=event.message_id,
                status=event.status,
                ts=event.timestamp,
                code=_status_code(event.data) if event.status == "failed" else None,
                phone_number_id=event.phone_number_id,
                customer=event.customer,
            )
        case TurnReady():
            return replace(row, turn_id=event.turn_id, message_ids=event.message_ids)
        case ReplyGenerated():
            return replace(
                row,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                tokens=event.tokens,
                message_ids=event.message_ids,
                ts=event.newest_timestamp,
            )
        case ReplySent():
            return replace(
                row,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                message_id=event.message_id,
                wamids=event.wamids,
            )
        case ReplyFailed():
            return replace(
                row,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                code=event.code,
                reason=event.reason,
            )
        case ReplyBlocked():
            return replace(row, turn_id=event.turn_id, reply_id=event.reply_id, reason=event.reason)
        case ReplySuperseded():
            return replace(row, turn_id=event.turn_id, reply_id=event.reply_id, tokens=event.tokens)
        case HandoffRequested() | HandoffReleased():
            return replace(row, turn_id=event.turn_id)
        case _:  # a type analytics does not read yet: landed with what every event has
            return row


# The columns event_row fills from each event type's fields (ts, code: see fast_row).
_ROW_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "message.received": (
        ("message_id", "message_id"),
        ("kind", "kind"),
        ("ts", "timestamp"),
        ("phone_number_id", "phone_number_id"),
        ("customer", "customer"),
    ),
    "message.rejected": (
        ("message_id", "message_id"),
        ("reason", "reason"),
        ("ts", "timestamp"),
        ("phone_number_id", "phone_number_id"),
        ("customer", "customer"),
    ),
    "status.updated": (
        ("message_id", "message_id"),
        ("status", "status"),
        ("ts", "timestamp"),
        ("phone_number_id", "phone_number_id"),
        ("customer", "customer"),
    ),
    "turn.ready": (("turn_id", "turn_id"), ("message_ids", "message_ids")),
    "reply.generated": (
        ("turn_id", "turn_id"),
        ("reply_id", "reply_id"),
        ("tokens", "tokens"),
        ("message_ids", "message_ids"),
        ("ts", "newest_timestamp"),
    ),
    "reply.sent": (
        ("turn_id", "turn_id"),
        ("reply_id", "reply_id"),
        ("message_id", "message_id"),
        ("wamids", "wamids"),
    ),
    "reply.failed": (
        ("turn_id", "turn_id"),
        ("reply_id", "reply_id"),
        ("code", "code"),
        ("reason", "reason"),
    ),
    "reply.blocked": (("turn_id", "turn_id"), ("reply_id", "reply_id"), ("reason", "reason")),
    "reply.superseded": (("turn_id", "turn_id"), ("reply_id", "reply_id"), ("tokens", "tokens")),
    "handoff.requested": (("turn_id", "turn_id"),),
    "handoff.released": (("turn_id", "turn_id"),),
}


class Plan(msgspec.Struct, frozen=True):
    """How fast_row (and analytics_bulk) reads one event type: its layout (what decode_fields
    would check) and the columns it lands."""

    layout: Layout
    columns: tuple[tuple[str, str], ...]  # (column of `events`, the event's field)


PLANS = {name: Plan(layout, _ROW_FIELDS.get(name, ())) for name, layout in LAYOUTS.items()}
_list_decoder = msgspec.json.Decoder(list[str])


def _plain_int(text: str) -> bool:
    """Whether decode_fields reads `text` as this very int: plain decimal digits, no leading
    zero (anything else is left to it)."""
    digits = text[1:] if text.startswith("-") else text
    return (
        0 < len(digits) <= 18
        and digits.isascii()
        and digits.isdigit()
        and (digits[0] != "0" or text == "0")
    )


def fast_row(key: str, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> str | None:
    """The `events` row of an entry as JSON, exactly what event_row makes of the event
    decode_fields reads, without building that event; None when the entry needs
    decode_fields' own reading (it may be undecodable: its error is decode_fields')."""
    try:
        values: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
        name = values.get("type", "")
        plan = PLANS.get(name)
        if plan is None:
            return None
        values = upcast_fields(name, values)
    except (UnicodeDecodeError, UnknownEventError):
        return None
    if not plan.layout.required <= values.keys():
        return None
    for field in plan.layout.ints:
        if field in values:
            if not _plain_int(values[field]):
                return None
            values[field] = int(values[field])
    for field in plan.layout.lists:
        if field in values:
            try:
                values[field] = _list_decoder.decode(values[field])
            except msgspec.DecodeError:  # ValidationError included
                return None
    ms, _, seq = entry_id.partition("-")
    row: dict[str, Any] = {
        "entry_id": entry_id,
        "stream_key": key,
        "stream": stream,
        "type": name,
        "session_id": values.get("session_id", ""),
        "at_ms": int(ms),
        "seq": int(seq or 0),
    }
    defaults = plan.layout.defaults
    for column, field in plan.columns:
        row[column] = values[field] if field in values else defaults[field]
    if name == "status.updated" and values["status"] == "failed":
        code = _status_code(values["data"])
        if code is not None:
            row["code"] = code
    return row_encoder.encode(row).decode()


def _status_code(data: str) -> int | None:
    """The error code of a failed status, from Meta's status object; None when absent."""
    try:
        errors = _status_decoder.decode(data).errors
    except msgspec.DecodeError:  # Meta's JSON, not ours: a missing code is not an error
        return None
    return errors[0].code if errors else None


def entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
