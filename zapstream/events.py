"""The log's event types, declared once, with the contract's `type` names.

Each type is a Struct tagged with its `type` string. Schema evolution follows msgspec's
rules: a field added later gets a default; no field is renamed or retyped. `version` is the
schema version written as the entry's `v`; envelope.py upcasts older entries when read.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    version: ClassVar[int] = 1
    # Empty only where no session can be known (a rejected message without a sender).
    session_id: str = ""


class MessageReceived(Event, tag="message.received", frozen=True, kw_only=True):
    message_id: str  # the wamid
    kind: str  # WhatsApp's message type: text, image, reaction, ...
    from_: str = msgspec.field(name="from", default="")  # wa_id; empty for a BSUID-only user
    user_id: str = ""  # business-scoped user id, when Meta sends one
    customer: str  # the conversation's customer key: wa_id when present, else user_id
    phone_number_id: str  # the business number that received it
    timestamp: int  # WhatsApp's timestamp, Unix seconds
    name: str = ""  # the customer's profile name, when the notification carries it
    data: str  # the message object as Meta sent it (JSON)


class MessageRejected(Event, tag="message.rejected", frozen=True, kw_only=True):
    message_id: str  # the wamid when readable, else `raw:` + a hash of the raw JSON
    raw: str  # the undecodable item exactly as received (JSON)
    reason: str
    phone_number_id: str = ""
    customer: str = ""
    timestamp: int = 0


class StatusUpdated(Event, tag="status.updated", frozen=True, kw_only=True):
    message_id: str  # the outbound wamid
    status: str  # sent, delivered, read, failed, played
    timestamp: int
    phone_number_id: str
    customer: str  # the recipient
    data: str  # the status object as Meta sent it (JSON)


class TurnReady(Event, tag="turn.ready", frozen=True, kw_only=True):
    turn_id: str  # the session's turn number, from 1
    message_ids: list[str]  # wamids, in WhatsApp timestamp order
    entry_ids: list[str] = []  # their message.received entries, same order
    phone_number_id: str = ""
    customer: str = ""


class ReplyGenerated(Event, tag="reply.generated", frozen=True, kw_only=True):
    turn_id: str
    reply_id: str  # `session_id:turn_id`: the sender's idempotency key
    body: str
    tokens: int = 0  # the AI's token usage, when known
    message_ids: list[str] = []  # every message this reply answers (superseded turns' too)
    phone_number_id: str = ""
    customer: str = ""
    # WhatsApp timestamp of the newest message answered: the 24-hour window counts from it.
    newest_timestamp: int = 0
    # When the newest message answered arrived (its message.received entry id, ms): the
    # sender measures inbound-message-to-reply latency from it. 0 on entries written before.
    received_ms: int = 0


class ReplySent(Event, tag="reply.sent", frozen=True, kw_only=True):
    # v2 lists every part in `wamids`; v1 entries (no `wamids`) are upcast in envelope.py.
    version: ClassVar[int] = 2
    turn_id: str
    reply_id: str
    message_id: str  # the wamid of the reply (of its first part when split)
    wamids: list[str] = []  # every part's wamid, in order
    resent: int = 0  # parts sent a second time after their first POST was left in doubt


class ReplyFailed(Event, tag="reply.failed", frozen=True, kw_only=True):
    turn_id: str
    reply_id: str
    code: int  # WhatsApp's error.code
    reason: str = ""  # its title and details


class ReplyBlocked(Event, tag="reply.blocked", frozen=True, kw_only=True):
    turn_id: str
    reply_id: str
    reason: str = ""  # window_closed (24 h), handoff (a human holds the session)


class ReplySuperseded(Event, tag="reply.superseded", frozen=True, kw_only=True):
    turn_id: str
    reply_id: str
    tokens: int = 0  # what the discarded answer cost, when known


class HandoffRequested(Event, tag="handoff.requested", frozen=True, kw_only=True):
    turn_id: str = ""
    phone_number_id: str = ""
    customer: str = ""


class HandoffReleased(Event, tag="handoff.released", frozen=True, kw_only=True):
    turn_id: str = ""  # the last turn cut while held: it and those before are never answered
    phone_number_id: str = ""
    customer: str = ""


class DeadLetterRequeued(Event, tag="deadletter.requeued", frozen=True, kw_only=True):
    """An operator sent a dead letter back to the group that failed it (`zapstream dlq`)."""

    group: str  # the group that failed it, and the only one that sees it again
    dead_letter_id: str  # its entry in the group's dead-letter stream (now deleted there)
    stream: str  # the stream the entry came from
    entry_id: str  # its id there: pending again for `group`
    error: str = ""  # why it was dead-lettered
    code: str = ""  # that error's code (processors/deadletter.py error_code)


class DeadLetterDropped(Event, tag="deadletter.dropped", frozen=True, kw_only=True):
    """An operator deleted a dead letter for good (`zapstream dlq drop`)."""

    group: str
    dead_letter_id: str
    stream: str
    entry_id: str
    error: str = ""
    code: str = ""


EVENT_CLASSES: tuple[type[Event], ...] = (
    MessageReceived,
    MessageRejected,
    StatusUpdated,
    TurnReady,
    ReplyGenerated,
    ReplySent,
    ReplyFailed,
    ReplyBlocked,
    ReplySuperseded,
    HandoffRequested,
    HandoffReleased,
    DeadLetterRequeued,
    DeadLetterDropped,
)


def type_name(cls: type[Event]) -> str:
    tag = msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag


EVENT_TYPES: dict[str, type[Event]] = {type_name(cls): cls for cls in EVENT_CLASSES}
TYPE_NAMES: dict[type[Event], str] = {cls: name for name, cls in EVENT_TYPES.items()}
