"""Properties of decode_notification() over hostile input: every body decodes to events and
`message.rejected` items or raises PayloadError, each rejection with a reason naming the place,
and one bad item never costs the others theirs."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ingest.payload import MAX_ITEMS, Inbound, PayloadError, decode_notification
from tests.documents import DocPath, at, paths
from tests.ingest.test_payload import GOOD
from tests.notifications import envelope, fixture_bytes, text_message, wire
from zapstream.envelope import encode_fields
from zapstream.events import MessageReceived, MessageRejected, StatusUpdated

FIXTURES = {name: json.loads(fixture_bytes(name)) for name in sorted(GOOD)}

# A PayloadError names the body's problem and where it was met.
PAYLOAD_REASON = re.compile(
    r"^(not a WhatsApp notification|entry\[\d+\]\.changes\[\d+\]\.value): \S"
)
# A rejection names the item (or the metadata it needed), then what was wrong with it: a
# backquoted field or JSON path, or the nesting.
REJECTION_REASON = re.compile(r"^(message|status|value\.metadata): .*(`[^`]+`|nested too deeply)")


def decode(body: bytes) -> list[Inbound] | PayloadError:
    """The decoder's answer to `body`, checked: PayloadError is the only exception it may
    raise, and each item is a stream entry of plain UTF-8 text (CONTRACT.md)."""
    try:
        items = decode_notification(body)
    except PayloadError as err:
        assert PAYLOAD_REASON.match(str(err)), str(err)
        return err
    for item in items:
        event = item.event
        assert isinstance(event, MessageReceived | MessageRejected | StatusUpdated)
        if isinstance(event, MessageRejected):
            assert REJECTION_REASON.match(event.reason), event.reason
            assert event.message_id
            loads(event.raw)  # the item as sent, still JSON
        else:
            loads(event.data)
        for value in encode_fields(event).values():
            value.encode("utf-8")  # no lone surrogates: XADD gets UTF-8 text
    return items


def loads(text: str) -> Any:
    """JSON, integers of any length kept as text (Python refuses past 4300 digits)."""
    return json.loads(text, parse_int=str)


# --- strategies ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
huge_strings = st.integers(min_value=10_000, max_value=300_000).map(lambda n: "\u00e9x" * (n // 2))


def numbers_swapped(value: Any) -> Any:
    """A number sent as a string, or a numeric string sent as a number."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
        return int(value)
    return 12345


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> tuple[str, Any, DocPath]:
    """A good fixture with one place changed: retyped, nulled, huge, swapped number, extra key,
    or removed; the path that was changed comes along."""
    name = draw(st.sampled_from(sorted(FIXTURES)))
    document = copy.deepcopy(FIXTURES[name])
    path = draw(st.sampled_from(paths(document)))
    original = at(document, path)
    kind = draw(st.sampled_from(["replace", "null", "huge", "number", "extra", "remove"]))
    replacement: Any
    if kind == "replace":
        replacement = draw(json_values)
    elif kind == "null":
        replacement = None
    elif kind == "huge":
        replacement = draw(huge_strings)
    elif kind == "number":
        replacement = numbers_swapped(original)
    elif kind == "extra" and isinstance(original, dict):
        replacement = {**original, draw(st.text(min_size=1, max_size=12)): draw(json_values)}
    else:
        replacement = None
    if not path:
        return name, replacement, path
    parent = at(document, path[:-1])
    if kind == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return name, document, path


senders = st.from_regex(r"\A[1-9][0-9]{7,14}\Z")
wamids = st.from_regex(r"\Awamid\.[A-Za-z0-9+/=_-]{1,80}\Z")
texts = st.text(max_size=300)  # any Unicode but lone surrogates, which JSON cannot carry


@st.composite
def valid_text_messages(draw: st.DrawFn) -> dict[str, object]:
    return text_message(
        draw(wamids),
        draw(senders),
        draw(texts),
        timestamp=draw(st.integers(min_value=1, max_value=10**11)),
    )


# Ways to break one message; each reason must name the field.
BREAKERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "id as a number": (lambda m: m.update(id=7), "`$.id`"),
    "id missing": (lambda m: m.pop("id"), "`id`"),
    "timestamp as a number": (lambda m: m.update(timestamp=1767261600), "`$.timestamp`"),
    "timestamp not digits": (lambda m: m.update(timestamp="yesterday"), "`timestamp`"),
    "from as a number": (lambda m: m.update({"from": 15550001111}), "`$.from`"),
    "no sender": (lambda m: m.pop("from"), "`from`"),
    "type as a list": (lambda m: m.update(type=["text"]), "`$.type`"),
    "text as a string": (lambda m: m.update(text="hi"), "`$.text`"),
    "text body as a number": (lambda m: m.update(text={"body": 1}), "`$.text.body`"),
    "text missing": (lambda m: m.pop("text"), "`text`"),
    "null message": (lambda m: m.clear(), "got `null`"),
}


@st.composite
def mixed_bodies(draw: st.DrawFn) -> tuple[list[Any], list[str | None]]:
    """Messages, some broken; for each, the field its rejection must name (None: valid)."""
    messages: list[Any] = []
    expected: list[str | None] = []
    for message in draw(st.lists(valid_text_messages(), min_size=1, max_size=12)):
        breaker = draw(st.sampled_from([None, *sorted(BREAKERS)]))
        if breaker is None:
            messages.append(message)
            expected.append(None)
            continue
        mutate, field = BREAKERS[breaker]
        mutate(message)
        messages.append(message if message else None)
        expected.append(field)
    return messages, expected


# --- properties ------------------------------------------------------------------------------


@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_are_refused(body: bytes) -> None:
    decode(body)


@given(json_values)
def test_arbitrary_json_decodes_or_is_refused(document: object) -> None:
    decode(json.dumps(document).encode())


@given(st.sampled_from(sorted(FIXTURES)), json_values)
def test_arbitrary_json_in_place_of_an_item_is_rejected_alone(name: str, value: object) -> None:
    document = copy.deepcopy(FIXTURES[name])
    change = document["entry"][0]["changes"][0]["value"]
    change.get("messages", change.get("statuses")).insert(0, value)
    result = decode(wire(document))
    assert isinstance(result, list) and len(result) == len(GOOD[name]) + 1
    first = result[0].event
    if isinstance(first, MessageRejected):
        assert json.loads(first.raw) == value
    original = decode_notification(fixture_bytes(name))
    assert [item.event for item in result[1:]] == [item.event for item in original]


@given(mutated_fixtures())
def test_a_mutated_fixture_decodes_or_is_refused(case: tuple[str, Any, DocPath]) -> None:
    name, document, path = case
    result = decode(wire(document))
    if isinstance(result, PayloadError) or document.get("object") != "whatsapp_business_account":
        return
    # Every item of the body is accounted for, in order ...
    items = _item_paths(document)
    assert len(result) == len(items)
    # ... and a change inside one item leaves the others as the fixture decodes them.
    touched = [i for i, item in enumerate(items) if path[: len(item)] == item]
    if touched and len(path) > len(items[touched[0]]):
        original = decode_notification(fixture_bytes(name))
        for index, (got, want) in enumerate(zip(result, original, strict=True)):
            if index != touched[0]:
                assert got.event == want.event


def _item_paths(document: Any) -> list[DocPath]:
    """The paths of the messages and statuses the decoder reads, in its order."""
    return [
        ("entry", e, "changes", c, "value", key, i)
        for e, entry in enumerate(document["entry"])
        for c, change in enumerate(entry.get("changes", []))
        if change["field"] == "messages"
        for key in ("messages", "statuses")
        for i in range(len(change["value"].get(key, [])))
    ]


@given(mixed_bodies())
def test_valid_messages_in_a_partly_bad_body_are_still_decoded(
    case: tuple[list[Any], list[str | None]],
) -> None:
    messages, expected = case
    result = decode(wire(envelope({"messages": messages})))
    assert isinstance(result, list) and len(result) == len(messages)
    for item, message, field in zip(result, messages, expected, strict=True):
        event = item.event
        if field is None:
            assert isinstance(event, MessageReceived)
            assert event.message_id == message["id"] and event.customer == message["from"]
            assert json.loads(event.data)["text"]["body"] == message["text"]["body"]
        else:
            assert isinstance(event, MessageRejected), (field, message)
            assert field in event.reason, (field, event.reason)
            assert json.loads(event.raw) == message
            if isinstance(message, dict) and isinstance(message.get("id"), str):
                assert event.message_id == message["id"]
            else:
                assert event.message_id.startswith("raw:")


@given(st.lists(valid_text_messages(), min_size=1, max_size=8), st.booleans())
def test_valid_messages_round_trip(messages: list[dict[str, Any]], escaped: bool) -> None:
    """decode(encode(messages)) keeps ids, senders, timestamps and texts, whether Meta escapes
    non-ASCII (it does) or not."""
    document = envelope({"messages": messages})
    body = wire(document) if escaped else json.dumps(document, ensure_ascii=False).encode()
    result = decode(body)
    assert isinstance(result, list)
    for item, message in zip(result, messages, strict=True):
        event = item.event
        assert isinstance(event, MessageReceived)
        assert (event.message_id, event.customer, str(event.timestamp)) == (
            message["id"],
            message["from"],
            message["timestamp"],
        )
        assert json.loads(event.data) == message
        assert item.dedup_id == message["id"]


@given(
    st.integers(min_value=1, max_value=3000),
    st.sampled_from(["[", '{"a":']),
    st.sampled_from(["extra", "text"]),
)
def test_deep_nesting_is_refused_or_rejected_never_raised(
    depth: int, opener: str, where: str
) -> None:
    """msgspec raises RecursionError past its depth limit; near the limit a body can pass the
    envelope's decoder and fail an item's, deeper in the stack."""
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    message = text_message("wamid.DEEP", "15550001111", "\u00e9")
    body = wire(envelope({"messages": [message]}))
    anchor = b'"text":{"body":"\\u00e9"}'
    assert anchor in body
    if where == "extra":
        body = body.replace(anchor, anchor + b',"extra":' + nested.encode())
    else:
        body = body.replace(anchor, b'"text":' + nested.encode())
    result = decode(body)
    if depth < 100:
        assert isinstance(result, list)
        assert isinstance(result[0].event, MessageReceived if where == "extra" else MessageRejected)


@given(
    st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b)),
    st.sampled_from(["body", "id", "key", "unknown"]),
)
def test_invalid_utf8_anywhere_is_not_json(bad: bytes, where: str) -> None:
    message = text_message("wamid.UTF", "15550001111", "BAD")
    body = wire(envelope({"messages": [message]}))
    if where == "body":
        body = body.replace(b"BAD", bad)
    elif where == "id":
        body = body.replace(b"wamid.UTF", b"wamid." + bad)
    elif where == "key":
        body = body.replace(b'"messaging_product"', b'"' + bad + b'"')
    else:
        body = body.replace(b'"type":"text"', b'"type":"text","x":"' + bad + b'"')
    result = decode(body)
    assert isinstance(result, PayloadError) and "not UTF-8" in str(result)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(st.lists(wamids, min_size=2, max_size=2, unique=True))
def test_a_duplicate_key_takes_its_last_value_as_json_parsers_do(ids: list[str]) -> None:
    first, last = ids
    message = text_message("ID", "15550001111", "hi")
    body = wire(envelope({"messages": [message]}))
    body = body.replace(b'"id":"ID"', f'"id":"{first}","id":"{last}"'.encode())
    result = decode(body)
    assert isinstance(result, list)
    (item,) = result
    assert isinstance(item.event, MessageReceived)
    assert (
        item.event.message_id
        == json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    )
    assert item.event.message_id == last


@given(st.sampled_from(["phone_number_id", "metadata"]), json_values)
def test_bad_metadata_rejects_every_message_naming_it(target: str, value: object) -> None:
    assume(not isinstance(value, str))
    messages = [text_message(f"wamid.M{i}", "15550001111", "hi") for i in range(3)]
    document: Any = envelope({"messages": messages})
    metadata = document["entry"][0]["changes"][0]["value"]
    if target == "metadata":
        metadata["metadata"] = value
        assume(not (isinstance(value, dict) and isinstance(value.get("phone_number_id"), str)))
    else:
        metadata["metadata"]["phone_number_id"] = value
    result = decode(wire(document))
    assert isinstance(result, list) and len(result) == 3
    for item, message in zip(result, messages, strict=True):
        assert isinstance(item.event, MessageRejected)
        assert item.event.reason.startswith("value.metadata: ")
        assert item.event.message_id == message["id"]


number_literals = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.sampled_from(["1e400", "-1e400", "1e-400", "-0", "0.0e999999", "1" + "0" * 5000]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@given(texts, number_literals)
def test_numbers_past_any_range_keep_the_message(text: str, number: str) -> None:
    """Valid JSON numbers that msgspec cannot hold untyped (1e400, 5000 digits) in a field we
    do not read: the message is received, its text intact, even when escapes make the decoder
    re-encode it."""
    message = text_message("wamid.NUM", "15550001111", text)
    body = wire(envelope({"messages": [message]}))
    body = body.replace(b'"type":"text"', b'"type":"text","extra":' + number.encode())
    result = decode(body)
    assert isinstance(result, list)
    (item,) = result
    assert isinstance(item.event, MessageReceived)
    assert loads(item.event.data)["text"]["body"] == text


@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("split", [False, True])
def test_a_body_past_max_items_is_refused_before_its_items_are_decoded(
    extra: int, split: bool
) -> None:
    """Up to MAX_ITEMS messages and statuses, in one change or spread over several, decode
    (as rejections here: each is a distinct number); one more and the body is refused."""
    count = MAX_ITEMS + extra
    document: Any = envelope({"messages": list(range(count))})
    if split:  # half the items as statuses of a second change
        change = document["entry"][0]["changes"][0]
        second = copy.deepcopy(change)
        change["value"]["messages"] = list(range(count // 2))
        second["value"] = {"statuses": list(range(count // 2, count))}
        document["entry"][0]["changes"].append(second)
    result = decode(wire(document))
    if extra:
        assert isinstance(result, PayloadError)
        assert f"{count} messages and statuses" in str(result)
    else:
        assert isinstance(result, list) and len(result) == count
