"""A layout reader accepts exactly the entries decode_fields reads laid out as encode_fields
writes them: a bulk load may take those as they are, never any other."""

from __future__ import annotations

import pytest

from projections.layouts import reader
from zapstream.envelope import decode_fields, encode_fields
from zapstream.events import MessageReceived, ReplyGenerated, ReplySent, StatusUpdated, TurnReady

EVENTS = [
    MessageReceived(
        session_id="c1-1",
        message_id="wamid.1",
        kind="text",
        from_="5511",
        customer="5511",
        phone_number_id="1000",
        timestamp=1_795_000_000,
        data='{"text":{"body":"hi, \\"you\\""}}',
    ),
    StatusUpdated(
        message_id="wamid.2",
        status="read",
        timestamp=0,
        phone_number_id="1000",
        customer="5511",
        data="{}",
    ),
    TurnReady(session_id="c1-1", turn_id="1", message_ids=["wamid.1", "wamid, 2"]),
    ReplyGenerated(session_id="c1-1", turn_id="1", reply_id="c1-1:1", body="", tokens=-3),
    ReplySent(session_id="c1-1", turn_id="1", reply_id="c1-1:1", message_id="w", wamids=[]),
]


_laid_out = reader({})


def _matches(fields: dict[str, str]) -> bool:
    return _laid_out([part.encode() for pair in fields.items() for part in pair])


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_what_encode_fields_writes_matches_and_decodes(event: object) -> None:
    fields = encode_fields(event)  # type: ignore[arg-type]
    assert _matches(fields)
    assert decode_fields(fields) == event


@pytest.mark.parametrize(
    "change",
    [
        {"v": "2"},  # another version
        {"timestamp": "017"},  # not plain decimal
        {"timestamp": "1e3"},
        {"message_id": None},  # a required field missing
        {"kind": None, "extra": "x"},
    ],
)
def test_anything_else_does_not_match(change: dict[str, str | None]) -> None:
    fields = encode_fields(EVENTS[0])
    for name, value in change.items():
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    assert not _matches(fields)


def test_the_last_fields_may_be_missing_but_only_from_the_end() -> None:
    fields = encode_fields(EVENTS[3])
    assert _matches({k: v for k, v in fields.items() if k != "received_ms"})
    assert not _matches({k: v for k, v in fields.items() if k != "tokens"})
    assert not _matches(dict(reversed(fields.items())))
