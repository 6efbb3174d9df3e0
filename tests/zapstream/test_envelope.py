"""encode_fields()/decode_fields(): every event type survives the trip through flat text."""

from __future__ import annotations

import msgspec
import pytest

from zapstream.envelope import UnknownEventError, decode_fields, encode_fields
from zapstream.events import (
    EVENT_TYPES,
    DeadLetterDropped,
    DeadLetterRequeued,
    Event,
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

SAMPLES: list[Event] = [
    MessageReceived(
        session_id="s-1",
        message_id="wamid.1",
        kind="text",
        from_="1555",
        customer="1555",
        phone_number_id="100",
        timestamp=1767261600,
        name="Ada",
        data='{"text":{"body":"olá 🚚"}}',
    ),
    MessageRejected(message_id="raw:ab", raw="{", reason="truncated"),
    StatusUpdated(
        session_id="s-1",
        message_id="wamid.o",
        status="read",
        timestamp=5,
        phone_number_id="100",
        customer="1555",
        data="{}",
    ),
    TurnReady(session_id="s-1", turn_id="t1", message_ids=["wamid.1", "wamid.2"]),
    ReplyGenerated(session_id="s-1", turn_id="t1", reply_id="r1", body="line 1\nline 2"),
    ReplySent(session_id="s-1", turn_id="t1", reply_id="r1", message_id="wamid.o"),
    ReplyFailed(session_id="s-1", turn_id="t1", reply_id="r1", code=131026),
    ReplyBlocked(session_id="s-1", turn_id="t1", reply_id="r1", reason="window closed"),
    ReplySuperseded(session_id="s-1", turn_id="t1", reply_id="r1"),
    HandoffRequested(session_id="s-1", turn_id="t1"),
    HandoffReleased(session_id="s-1"),
    DeadLetterRequeued(
        session_id="s-1",
        group="send",
        dead_letter_id="1767261600000-0",
        stream="replies",
        entry_id="1767261500000-0",
        error="rejected: unknown WhatsApp error: WhatsApp error 131999 (HTTP 400): odd",
        code="whatsapp:131999",
    ),
    DeadLetterDropped(
        group="debounce", dead_letter_id="2-0", stream="messages", entry_id="1-0", code="x"
    ),
]


def test_every_event_type_has_a_sample() -> None:
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_through_utf8_fields(event: Event) -> None:
    fields = encode_fields(event)
    assert list(fields)[:3] == ["type", "v", "session_id"]
    assert all(isinstance(v, str) for v in fields.values())
    wire = {k.encode(): v.encode("utf-8") for k, v in fields.items()}
    assert decode_fields(wire) == event


def test_contract_field_names_are_used() -> None:
    fields = encode_fields(SAMPLES[0])
    assert fields["type"] == "message.received" and fields["from"] == "1555"
    assert fields["timestamp"] == "1767261600"
    assert encode_fields(SAMPLES[3])["message_ids"] == '["wamid.1","wamid.2"]'


def test_unknown_type_and_future_version_are_refused() -> None:
    with pytest.raises(UnknownEventError, match="unknown event type"):
        decode_fields({b"type": b"message.exploded", b"v": b"1"})
    fields = encode_fields(SAMPLES[4]) | {"v": "9"}
    with pytest.raises(UnknownEventError, match="v9"):
        decode_fields(fields)


def test_a_wrong_field_type_is_a_validation_error() -> None:
    fields = encode_fields(SAMPLES[6]) | {"code": "not-a-number"}
    with pytest.raises(msgspec.ValidationError):
        decode_fields(fields)


def test_an_older_version_is_upcast_when_read() -> None:
    """reply.sent v1 had no `wamids`: read today, it lists the one wamid it named."""
    v1 = {
        b"type": b"reply.sent",
        b"v": b"1",
        b"session_id": b"s1",
        b"turn_id": b"1",
        b"reply_id": b"s1:1",
        b"message_id": b"wamid.OUT.1",
    }
    event = decode_fields(v1)
    assert isinstance(event, ReplySent)
    assert event.wamids == ["wamid.OUT.1"]
    with pytest.raises(UnknownEventError):
        decode_fields({**v1, b"v": b"0"})
