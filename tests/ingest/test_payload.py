"""decode_notification(): views over Meta's notification, one bad message never the rest."""

from __future__ import annotations

import json

import pytest

from ingest.payload import PayloadError, decode_notification
from tests.notifications import envelope, fixture_bytes, wire
from zapstream.events import MessageReceived, MessageRejected, StatusUpdated

# fixture -> what each item decodes to, in body order: (event type, kind or status)
GOOD = {
    "text_single.json": [("message.received", "text")],
    "text_burst_1.json": [("message.received", "text")],
    "text_burst_2.json": [("message.received", "text")],
    "text_burst_3.json": [("message.received", "text")],
    "batch_multi.json": [("message.received", "text"), ("message.received", "text")],
    "image_with_caption.json": [("message.received", "image")],
    "audio.json": [("message.received", "audio")],
    "location.json": [("message.received", "location")],
    "interactive_button_reply.json": [("message.received", "interactive")],
    "interactive_list_reply.json": [("message.received", "interactive")],
    "reaction.json": [("message.received", "reaction")],
    "reply_with_context.json": [("message.received", "text")],
    "unsupported_type.json": [("message.received", "unsupported")],
    "statuses_sent_delivered_read.json": [
        ("status.updated", "sent"),
        ("status.updated", "delivered"),
        ("status.updated", "read"),
    ],
    "status_failed.json": [("status.updated", "failed")],
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_fixture_decodes_each_item(name: str) -> None:
    items = decode_notification(fixture_bytes(name))
    got = []
    for item in items:
        event = item.event
        if isinstance(event, MessageReceived):
            got.append(("message.received", event.kind))
            assert event.phone_number_id == "100000000000001"
            assert item.conversation == f"100000000000001:{event.from_}"
            assert json.loads(event.data)["id"] == event.message_id
        elif isinstance(event, StatusUpdated):
            got.append(("status.updated", event.status))
            assert item.session == "outbound" and item.outbound == event.message_id
        else:
            pytest.fail(f"unexpected {event!r}")
    assert got == GOOD[name]


def test_escaped_text_is_stored_as_the_characters_it_stands_for() -> None:
    (item,) = decode_notification(fixture_bytes("text_burst_2.json"))
    assert isinstance(item.event, MessageReceived)
    assert (
        json.loads(item.event.data)["text"]["body"]
        == "do you deliver to Rua das Flores? \U0001f69a"
    )
    assert "\U0001f69a" in item.event.data


def test_wrong_types_message_gives_four_rejections_with_reasons() -> None:
    items = decode_notification(fixture_bytes("bad/wrong_types_message.json"))
    assert len(items) == 4
    events = [item.event for item in items]
    assert all(isinstance(e, MessageRejected) for e in events)
    reasons = [e.reason for e in events if isinstance(e, MessageRejected)]
    assert "`$.from`" in reasons[0]
    assert "`$.text.body`" in reasons[1]
    assert "`$.location.latitude`" in reasons[2]
    assert "`id`" in reasons[3]
    raws = [json.loads(e.raw) for e in events if isinstance(e, MessageRejected)]
    assert raws[1]["timestamp"] == "yesterday"
    # Readable wamids are kept; an unreadable id becomes a hash of the raw JSON.
    ids = [e.message_id for e in events if isinstance(e, MessageRejected)]
    assert ids[1].startswith("wamid.") and ids[0].startswith("raw:") and ids[3].startswith("raw:")


@pytest.mark.parametrize(
    "name",
    [
        "bad/not_json.json",
        "bad/empty_body.json",
        "bad/truncated.json",
        "bad/json_array_top_level.json",
        "bad/wrong_types_envelope.json",
    ],
)
def test_bodies_that_are_not_notifications_raise(name: str) -> None:
    with pytest.raises(PayloadError):
        decode_notification(fixture_bytes(name))


@pytest.mark.parametrize(
    "name",
    [
        "bad/wrong_object.json",
        "bad/empty_entry.json",
        "bad/missing_messages_and_statuses.json",
        "bad/other_field_template_status.json",
    ],
)
def test_valid_notifications_with_nothing_to_log(name: str) -> None:
    assert decode_notification(fixture_bytes(name)) == []


def test_value_that_is_not_an_object_is_not_a_notification() -> None:
    body = wire(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": "text"}]}],
        }
    )
    with pytest.raises(PayloadError, match=r"entry\[0\]\.changes\[0\]\.value"):
        decode_notification(body)


def test_business_scoped_user_without_phone_number_is_keyed_by_user_id() -> None:
    message = {
        "from_user_id": "US.13491208655302741918",
        "id": "wamid.BSUID1",
        "timestamp": "1767261600",
        "type": "text",
        "text": {"body": "hi"},
    }
    (item,) = decode_notification(wire(envelope({"messages": [message]})))
    assert isinstance(item.event, MessageReceived)
    assert item.event.customer == "US.13491208655302741918"
    assert item.event.from_ == ""
    assert item.conversation == "100000000000001:US.13491208655302741918"


def test_wa_id_wins_over_user_id_when_both_are_present() -> None:
    message = {
        "from": "15550001111",
        "from_user_id": "US.1",
        "id": "wamid.BOTH",
        "timestamp": "1767261600",
        "type": "text",
        "text": {"body": "hi"},
    }
    (item,) = decode_notification(wire(envelope({"messages": [message]})))
    assert isinstance(item.event, MessageReceived)
    assert item.event.customer == "15550001111" and item.event.user_id == "US.1"


def test_fields_meta_adds_later_are_tolerated_and_kept() -> None:
    message = {
        "from": "15550001111",
        "id": "wamid.NEW",
        "timestamp": "1767261600",
        "type": "text",
        "text": {"body": "hi", "new_flag": True},
        "brand_new": {"a": 1},
    }
    (item,) = decode_notification(wire(envelope({"messages": [message]})))
    assert isinstance(item.event, MessageReceived)
    assert json.loads(item.event.data)["brand_new"] == {"a": 1}


def test_an_unknown_message_type_is_received_not_rejected() -> None:
    message = {
        "from": "15550001111",
        "id": "wamid.ORDER",
        "timestamp": "1767261600",
        "type": "order",
        "order": {"catalog_id": "1"},
    }
    (item,) = decode_notification(wire(envelope({"messages": [message]})))
    assert isinstance(item.event, MessageReceived) and item.event.kind == "order"


def test_a_type_without_its_body_is_rejected() -> None:
    message = {
        "from": "15550001111",
        "id": "wamid.NOBODY",
        "timestamp": "1767261600",
        "type": "image",
    }
    (item,) = decode_notification(wire(envelope({"messages": [message]})))
    assert isinstance(item.event, MessageRejected)
    assert "`image`" in item.event.reason
    assert item.session == "join"  # the sender is known: the rejection joins the session


def test_reaction_dedup_id_includes_the_emoji() -> None:
    (added,) = decode_notification(fixture_bytes("reaction.json"))
    body = fixture_bytes("reaction.json").replace(b',"emoji":"\\ud83d\\udc4d"', b"")
    (removed,) = decode_notification(body)
    assert added.event.message_id == removed.event.message_id  # type: ignore[attr-defined]
    assert added.dedup_id != removed.dedup_id


def test_bad_metadata_rejects_messages_but_keeps_them() -> None:
    document = envelope(
        {
            "messages": [
                {
                    "from": "15550001111",
                    "id": "wamid.M",
                    "type": "text",
                    "timestamp": "1767261600",
                    "text": {"body": "hi"},
                }
            ]
        }
    )
    document["entry"][0]["changes"][0]["value"]["metadata"] = {"phone_number_id": 5}  # type: ignore[index]
    (item,) = decode_notification(wire(document))
    assert isinstance(item.event, MessageRejected)
    assert "metadata" in item.event.reason and item.event.message_id == "wamid.M"


def test_status_keys_on_wamid_and_status() -> None:
    items = decode_notification(fixture_bytes("statuses_sent_delivered_read.json"))
    assert len({item.dedup_id for item in items}) == 3
    assert {item.conversation for item in items} == {"100000000000001:15550001111"}
