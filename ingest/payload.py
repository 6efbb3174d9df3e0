"""Meta's webhook notification, read through views: only the fields we use, types strict.

The envelope (object, entry, changes, value) must have the documented shape, else the body
is not a WhatsApp notification (PayloadError, answered 400). Each message and status stays
`msgspec.Raw` until decoded on its own, so one bad item becomes `message.rejected` with its
raw JSON and the reason, and the rest of the body goes on.

Hostile bodies end in one of those two answers, never in another exception: a body that is not
UTF-8 is not JSON (RFC 8259), and JSON nested past msgspec's depth limit (it raises
RecursionError, not DecodeError) is refused where it is met.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from zapstream.events import Event, MessageReceived, MessageRejected, StatusUpdated
from zapstream.keys import conversation_key


class PayloadError(ValueError):
    """The body is not a WhatsApp notification; nothing of it is appended."""


# Meta batches at most 1000 updates in one POST. A body with ten times as many messages and
# statuses is not one of its notifications; decoding and appending it would take seconds of
# the event loop and hold Redis in one script.
MAX_ITEMS = 10_000


class _View(msgspec.Struct, frozen=True, kw_only=True):
    """Unknown fields are ignored: Meta adds fields without notice."""


# --- the envelope ---------------------------------------------------------------------------


class Change(_View, frozen=True, kw_only=True):
    field: str
    value: msgspec.Raw = msgspec.Raw(b"null")


class Entry(_View, frozen=True, kw_only=True):
    changes: list[Change] = []


class Notification(_View, frozen=True, kw_only=True):
    object: str
    entry: list[Entry]


class Value(_View, frozen=True, kw_only=True):
    metadata: msgspec.Raw = msgspec.Raw(b"null")
    contacts: msgspec.Raw = msgspec.Raw(b"null")
    messages: list[msgspec.Raw] = []
    statuses: list[msgspec.Raw] = []
    errors: list[msgspec.Raw] = []


class Metadata(_View, frozen=True, kw_only=True):
    phone_number_id: str


class Profile(_View, frozen=True, kw_only=True):
    name: str | None = None


class Contact(_View, frozen=True, kw_only=True):
    wa_id: str | None = None
    user_id: str | None = None
    profile: Profile | None = None


# --- messages: one view per body type we read -----------------------------------------------


class Text(_View, frozen=True, kw_only=True):
    body: str


class Media(_View, frozen=True, kw_only=True):  # image, video, audio, document, sticker
    id: str
    mime_type: str = ""
    caption: str | None = None
    filename: str | None = None


class Location(_View, frozen=True, kw_only=True):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class ReplyChoice(_View, frozen=True, kw_only=True):
    id: str
    title: str
    description: str | None = None


class Interactive(_View, frozen=True, kw_only=True):
    type: str
    button_reply: ReplyChoice | None = None
    list_reply: ReplyChoice | None = None


class Button(_View, frozen=True, kw_only=True):
    text: str
    payload: str | None = None


class Reaction(_View, frozen=True, kw_only=True):
    message_id: str
    emoji: str | None = None  # absent when the customer removes the reaction


class ContactName(_View, frozen=True, kw_only=True):
    formatted_name: str | None = None


class ContactCard(_View, frozen=True, kw_only=True):
    name: ContactName | None = None


class Context(_View, frozen=True, kw_only=True):
    id: str | None = None
    from_: str | None = msgspec.field(name="from", default=None)


class Message(_View, frozen=True, kw_only=True):
    id: str
    from_: str | None = msgspec.field(name="from", default=None)
    from_user_id: str | None = None
    timestamp: str
    type: str
    context: Context | None = None
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    audio: Media | None = None
    document: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    contacts: list[ContactCard] | None = None
    interactive: Interactive | None = None
    button: Button | None = None
    reaction: Reaction | None = None


# Message types whose body object must be present: its absence means a malformed message.
_BODY_REQUIRED = frozenset(
    {
        "text",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
    }
)


class StatusError(_View, frozen=True, kw_only=True):
    code: int


class Status(_View, frozen=True, kw_only=True):
    id: str
    status: str
    timestamp: str
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    biz_opaque_callback_data: str | None = None
    errors: list[StatusError] | None = None


_notification_decoder = msgspec.json.Decoder(Notification)
_value_decoder = msgspec.json.Decoder(Value)
_metadata_decoder = msgspec.json.Decoder(Metadata)
_contacts_decoder = msgspec.json.Decoder(list[Contact])
_message_decoder = msgspec.json.Decoder(Message)
_status_decoder = msgspec.json.Decoder(Status)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

# What msgspec raises on bytes that are not what a decoder expects: malformed or mistyped JSON
# (DecodeError), or JSON nested deeper than its recursion limit (RecursionError).
_UNDECODABLE = (msgspec.DecodeError, RecursionError)


# --- what the webhook appends ---------------------------------------------------------------

SessionRule = Literal["advance", "join", "outbound", "none"]


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """One event to append, with what append.lua needs to dedup it and find its session."""

    event: Event  # session_id still empty: the append script fills it in
    stream: Literal["messages", "statuses"]
    conversation: str  # `phone_number_id:customer`; empty when unknown
    dedup_id: str  # what a redelivery repeats: the wamid (statuses: wamid and status)
    # advance: opens or extends the session at `timestamp`; join: takes the current session
    # (opens one at Redis's clock if none); outbound: the session of the outbound wamid
    # `outbound`; none: no session.
    session: SessionRule
    timestamp: int = 0
    outbound: str = ""


def decode_notification(body: bytes) -> list[Inbound]:
    """Every message and status of a notification, in body order; PayloadError if not one."""
    _check_utf8(body)
    try:
        notification = _notification_decoder.decode(body)
    except msgspec.DecodeError as err:
        raise PayloadError(f"not a WhatsApp notification: {err}") from err
    except RecursionError as err:
        raise PayloadError("not a WhatsApp notification: JSON nested too deeply") from err
    if notification.object != "whatsapp_business_account":
        # A valid notification of another product (Messenger, Instagram): not ours.
        return []
    values: list[Value] = []
    for e, entry in enumerate(notification.entry):
        for c, change in enumerate(entry.changes):
            if change.field != "messages":
                continue  # template status, quality, account updates: acknowledged, not logged
            try:
                values.append(_value_decoder.decode(change.value))
            except _UNDECODABLE as err:
                raise PayloadError(f"entry[{e}].changes[{c}].value: {_explain(err)}") from err
    # Counted before any item is decoded: the envelope's decoders only slice the body.
    count = sum(len(value.messages) + len(value.statuses) for value in values)
    if count > MAX_ITEMS:
        raise PayloadError(
            f"not a WhatsApp notification: {count} messages and statuses, more than "
            f"{MAX_ITEMS} (Meta batches at most 1000)"
        )
    items: list[Inbound] = []
    for value in values:
        items.extend(_decode_value(value))
    return items


def _check_utf8(body: bytes) -> None:
    # msgspec checks UTF-8 only in the strings it decodes: invalid bytes in a skipped field or
    # a Raw item would surface later as UnicodeDecodeError. Meta escapes non-ASCII, so the
    # ASCII test is the usual, cheap path.
    if body.isascii():
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError(
            f"not a WhatsApp notification: not UTF-8 ({err.reason} at byte {err.start})"
        ) from err


def _explain(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "JSON nested too deeply"
    return str(err)


def _decode_value(value: Value) -> list[Inbound]:
    items: list[Inbound] = []
    phone_number_id = ""
    metadata_error = ""
    try:
        phone_number_id = _metadata_decoder.decode(value.metadata).phone_number_id
    except _UNDECODABLE as err:
        metadata_error = f"value.metadata: {_explain(err)}"
    names = _contact_names(value.contacts)
    for raw in value.messages:
        items.append(_decode_message(raw, phone_number_id, metadata_error, names))
    for raw in value.statuses:
        items.append(_decode_status(raw, phone_number_id, metadata_error))
    return items


def _contact_names(raw: msgspec.Raw) -> dict[str, str]:
    # Names are a courtesy: a malformed contacts list loses them, never a message.
    try:
        contacts = _contacts_decoder.decode(raw) if bytes(raw) != b"null" else []
    except _UNDECODABLE:
        return {}
    names: dict[str, str] = {}
    for contact in contacts:
        name = contact.profile.name if contact.profile else None
        for key in (contact.wa_id, contact.user_id):
            if key and name:
                names[key] = name
    return names


def _decode_message(
    raw: msgspec.Raw, phone_number_id: str, metadata_error: str, names: dict[str, str]
) -> Inbound:
    try:
        message = _message_decoder.decode(raw)
    except _UNDECODABLE as err:
        return _rejected(raw, f"message: {_explain(err)}", phone_number_id)
    if metadata_error:
        return _rejected(raw, metadata_error, phone_number_id)
    customer = message.from_ or message.from_user_id or ""
    if not customer:
        return _rejected(raw, "message: no sender (`from` or `from_user_id`)", phone_number_id)
    if not _is_timestamp(message.timestamp):
        return _rejected(
            raw, f"message: `timestamp` is not Unix seconds: {message.timestamp!r}", phone_number_id
        )
    if message.type in _BODY_REQUIRED and getattr(message, message.type) is None:
        return _rejected(
            raw,
            f"message: type {message.type!r} without its `{message.type}` object",
            phone_number_id,
        )
    timestamp = int(message.timestamp)
    dedup_id = message.id
    if message.reaction is not None:
        # Adding and removing a reaction may share one wamid.
        dedup_id = f"{message.id}:{message.reaction.emoji or ''}"
    event = MessageReceived(
        message_id=message.id,
        kind=message.type,
        from_=message.from_ or "",
        user_id=message.from_user_id or "",
        customer=customer,
        phone_number_id=phone_number_id,
        timestamp=timestamp,
        name=names.get(customer, ""),
        data=_readable_json(raw),
    )
    return Inbound(
        event=event,
        stream="messages",
        conversation=conversation_key(phone_number_id, customer),
        dedup_id=dedup_id,
        session="advance",
        timestamp=timestamp,
    )


def _decode_status(raw: msgspec.Raw, phone_number_id: str, metadata_error: str) -> Inbound:
    try:
        status = _status_decoder.decode(raw)
    except _UNDECODABLE as err:
        return _rejected(raw, f"status: {_explain(err)}", phone_number_id)
    if metadata_error:
        return _rejected(raw, metadata_error, phone_number_id)
    if not _is_timestamp(status.timestamp):
        return _rejected(
            raw, f"status: `timestamp` is not Unix seconds: {status.timestamp!r}", phone_number_id
        )
    customer = status.recipient_id or status.recipient_user_id or ""
    event = StatusUpdated(
        message_id=status.id,
        status=status.status,
        timestamp=int(status.timestamp),
        phone_number_id=phone_number_id,
        customer=customer,
        data=_readable_json(raw),
    )
    return Inbound(
        event=event,
        stream="statuses",
        conversation=conversation_key(phone_number_id, customer) if customer else "",
        dedup_id=f"{status.id}:{status.status}",
        session="outbound",
        outbound=status.id,
    )


def _rejected(raw: msgspec.Raw, reason: str, phone_number_id: str) -> Inbound:
    """A message.rejected for an item we cannot decode, keeping whatever ids are readable."""
    data = bytes(raw)
    text = data.decode("utf-8", errors="replace")
    try:
        loose = _any_decoder.decode(data)
    except _UNDECODABLE:
        loose = None
    fields = loose if isinstance(loose, dict) else {}

    def readable(name: str) -> str:
        value = fields.get(name)
        return value if isinstance(value, str) else ""

    message_id = readable("id") or "raw:" + hashlib.sha256(data).hexdigest()[:32]
    customer = readable("from") or readable("from_user_id") or readable("recipient_id")
    stamp = readable("timestamp")
    timestamp = int(stamp) if _is_timestamp(stamp) else 0
    event = MessageRejected(
        message_id=message_id,
        raw=text,
        reason=reason,
        phone_number_id=phone_number_id,
        customer=customer,
        timestamp=timestamp,
    )
    known = bool(customer and phone_number_id)
    return Inbound(
        event=event,
        stream="messages",
        conversation=conversation_key(phone_number_id, customer) if known else "",
        dedup_id=f"{message_id}:rejected",
        session="join" if known else "none",
        timestamp=timestamp,
    )


def _is_timestamp(value: str) -> bool:
    return 0 < len(value) <= 12 and value.isascii() and value.isdigit()


def _readable_json(raw: msgspec.Raw) -> str:
    """The item's JSON as text; Meta's `\\uXXXX` escapes become the characters they stand for."""
    data = bytes(raw)
    if b"\\u" in data:
        try:
            data = _encoder.encode(_any_decoder.decode(data))
        except _UNDECODABLE:
            # A number past 64 bits or a float's range (1e400), or nesting too deep: valid
            # JSON that msgspec cannot hold untyped. Kept as sent, escapes and all.
            pass
    return data.decode("utf-8")
