"""Hostile bodies, each correctly signed, POSTed to the real webhook on loopback with a real
Redis. Each gets 400 or 413 with nothing appended (Meta retries a non-200), or 200 with every
item appended, the undecodable ones as `message.rejected` naming what was wrong; never a 500,
and the server answers a normal notification afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from ingest.payload import MAX_ITEMS
from tests.ingest.test_webhook import MESSAGES, PATH, all_entries, entries
from tests.notifications import (
    SECRET,
    envelope,
    fixture_bytes,
    messages_notification,
    signed_headers,
    text_message,
    wire,
)
from tests.servers import Webhook
from tests.waiting import eventually
from zapstream import topology
from zapstream.signing import sign

SENDER = "15550001111"
TIMESTAMP = 1767261600
MAX_BODY = topology.Webhook().max_body  # 3 MiB, as streams.yaml has it


class Hostile(msgspec.Struct, frozen=True, kw_only=True):
    """A body and the answer it must get. For a 200, `appended` lists the entries the streams
    hold afterwards, in order: (type, message_id, a fragment of the rejection's reason); a
    message_id of `raw:` stands for any hash of the raw item."""

    body: bytes
    status: int
    answer: str = ""  # a fragment of a refusal's text
    appended: tuple[tuple[str, str, str], ...] = ()
    duplicates: int = 0  # items of the body already appended (by an earlier item of it)
    content_type: str | None = "application/json"


def message(n: int, **fields: Any) -> dict[str, Any]:
    """A valid text message, with fields replaced (None values kept as JSON null)."""
    return {**text_message(f"wamid.HOSTILE{n}", SENDER, f"message {n}", TIMESTAMP), **fields}


def without(document: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in keys}


def notification(*messages: Any, **value: Any) -> dict[str, Any]:
    return envelope({"messages": list(messages), **value})


def with_change(**change: Any) -> bytes:
    """One valid message, the change of the envelope replaced in part."""
    document = notification(message(1))
    document["entry"][0]["changes"][0].update(change)
    return wire(document)


def with_entry(entry: Any) -> bytes:
    document = notification(message(1))
    document["entry"] = entry
    return wire(document)


def received(n: int) -> tuple[str, str, str]:
    return ("message.received", f"wamid.HOSTILE{n}", "")


def rejected(n: int | None, reason: str) -> tuple[str, str, str]:
    return ("message.rejected", "raw:" if n is None else f"wamid.HOSTILE{n}", reason)


def refused(body: bytes, answer: str) -> Hostile:
    return Hostile(body=body, status=400, answer=answer)


def accepted(body: bytes, *appended: tuple[str, str, str], **options: Any) -> Hostile:
    return Hostile(body=body, status=200, appended=appended, **options)


def deep(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + b"1" + closer * depth


ONE = wire(notification(message(1)))
ANCHOR = b'"type":"text"'
assert ANCHOR in ONE

# name -> the case, built when its test runs (some are megabytes).
CORPUS: dict[str, Callable[[], Hostile]] = {
    # Not a notification at all: 400.
    "empty body": lambda: refused(b"", "truncated"),
    "not json": lambda: refused(b"hello, webhook", "malformed"),
    "nul bytes": lambda: refused(b"\x00" * 64, "malformed"),
    "truncated json": lambda: refused(ONE[: len(ONE) // 2], "truncated"),
    "json null": lambda: refused(b"null", "Expected `object`"),
    "json array": lambda: refused(b"[]", "Expected `object`"),
    "json string": lambda: refused(b'"whatsapp_business_account"', "Expected `object`"),
    "json number": lambda: refused(b"1767261600", "Expected `object`"),
    "json true": lambda: refused(b"true", "Expected `object`"),
    "100k nested arrays": lambda: refused(deep(100_000), "Expected `object`"),
    "100k nested arrays in a message": lambda: refused(
        ONE.replace(ANCHOR, ANCHOR + b',"x":' + deep(100_000)), "nested too deeply"
    ),
    "100k nested objects in the value": lambda: refused(
        ONE.replace(b'"messaging_product"', b'"x":' + deep(100_000, b'{"a":', b"}") + b',"m"'),
        "nested too deeply",
    ),
    "invalid utf-8 in a text": lambda: refused(
        ONE.replace(b"message 1", b"message \xff\xfe"), "not UTF-8"
    ),
    "invalid utf-8 in an unknown key": lambda: refused(
        ONE.replace(b'"messaging_product"', b'"\xc3\x28"'), "not UTF-8"
    ),
    "overlong utf-8 encoding": lambda: refused(
        ONE.replace(b"message 1", b"message \xc0\xaf"), "not UTF-8"
    ),
    "utf-16 body": lambda: refused(ONE.decode().encode("utf-16"), "not UTF-8"),
    "lone surrogate escape": lambda: refused(
        ONE.replace(b"message 1", b"message \\ud800"), "malformed"
    ),
    # The envelope's shape is wrong at some level: 400, and the valid message in it is not
    # appended either (Meta retries a non-200; a retry must not find half the body in).
    "object is a number": lambda: refused(
        wire({**notification(message(1)), "object": 1}), "`$.object`"
    ),
    "object is null": lambda: refused(
        wire({**notification(message(1)), "object": None}), "`$.object`"
    ),
    "object missing": lambda: refused(wire(without(notification(message(1)), "object")), "object"),
    "entry is an object": lambda: refused(with_entry({}), "`$.entry`"),
    "entry is null": lambda: refused(with_entry(None), "`$.entry`"),
    "entry as a json string": lambda: refused(
        with_entry(json.dumps(notification(message(1))["entry"])), "`$.entry`"
    ),
    "entry item is a number": lambda: refused(with_entry([1]), "`$.entry[0]`"),
    "changes is a string": lambda: refused(with_entry([{"changes": "x"}]), "changes"),
    "changes is null": lambda: refused(with_entry([{"changes": None}]), "changes"),
    "field is a number": lambda: refused(with_change(field=1), "field"),
    "field is null": lambda: refused(with_change(field=None), "field"),
    "value is a list": lambda: refused(with_change(value=[]), "entry[0].changes[0].value"),
    "value is null": lambda: refused(with_change(value=None), "entry[0].changes[0].value"),
    "value missing": lambda: refused(
        wire(
            {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages"}]}]}
        ),
        "entry[0].changes[0].value",
    ),
    "messages is an object": lambda: refused(
        wire(envelope({"messages": message(1)})), "`$.messages`"
    ),
    "messages is null": lambda: refused(wire(envelope({"messages": None})), "`$.messages`"),
    "statuses is a string": lambda: refused(wire(envelope({"statuses": "sent"})), "`$.statuses`"),
    "good entry then a bad one": lambda: refused(
        with_entry([notification(message(1))["entry"][0], {"changes": [{"field": 7}]}]),
        "entry[1]",
    ),
    # Bad items inside a valid notification: 200, each rejected with its reason, the rest in.
    "null message": lambda: accepted(
        wire(notification(message(1), None, message(2))),
        received(1),
        rejected(None, "got `null`"),
        received(2),
    ),
    "messages of every json type": lambda: accepted(
        wire(notification(1, "text", [], True, 1.5)),
        *[rejected(None, "Expected `object`")] * 5,
    ),
    "id is a number": lambda: accepted(
        wire(notification(message(1, id=12345), message(2))),
        rejected(None, "`$.id`"),
        received(2),
    ),
    "timestamp is a number": lambda: accepted(
        wire(notification(message(1, timestamp=TIMESTAMP))), rejected(1, "`$.timestamp`")
    ),
    "timestamp is not digits": lambda: accepted(
        wire(notification(message(1, timestamp="1767261600.5"))), rejected(1, "`timestamp`")
    ),
    "from is a number": lambda: accepted(
        wire(notification(message(1, **{"from": int(SENDER)}))), rejected(1, "`$.from`")
    ),
    "text is a string": lambda: accepted(
        wire(notification(message(1, text="hi"))), rejected(1, "`$.text`")
    ),
    "text body is a number": lambda: accepted(
        wire(notification(message(1, text={"body": 42}))), rejected(1, "`$.text.body`")
    ),
    "latitude is a string": lambda: accepted(
        wire(
            notification(
                message(1, type="location", location={"latitude": "38.7", "longitude": -9.1})
            )
        ),
        rejected(1, "`$.location.latitude`"),
    ),
    "null in every message field": lambda: accepted(
        wire(notification({k: None for k in message(1)})), rejected(None, "`$.id`")
    ),
    "phone_number_id is a number": lambda: accepted(
        wire(notification(message(1), message(2), metadata={"phone_number_id": 100000000000001})),
        rejected(1, "value.metadata"),
        rejected(2, "value.metadata"),
    ),
    "metadata is null": lambda: accepted(
        wire(notification(message(1), metadata=None)), rejected(1, "value.metadata")
    ),
    "status error code is a string": lambda: accepted(
        wire(
            envelope(
                {
                    "statuses": [
                        {
                            "id": "wamid.OUT1",
                            "status": "failed",
                            "timestamp": str(TIMESTAMP),
                            "recipient_id": SENDER,
                            "errors": [{"code": "131047"}],
                        }
                    ]
                }
            )
        ),
        ("message.rejected", "wamid.OUT1", "`$.errors[0].code`"),
    ),
    "contacts is a number": lambda: accepted(
        wire(notification(message(1), contacts=7)), received(1)
    ),
    "extra keys everywhere": lambda: accepted(
        wire(
            {
                **notification({**message(1), "x": {"y": [1, None]}}, extra=[{}]),
                "new": True,
            }
        ),
        received(1),
    ),
    "numbers past any range": lambda: accepted(
        ONE.replace(ANCHOR, ANCHOR + b',"a":1e400,"b":' + b"9" * 5000).replace(
            b"message 1", b"m\\u00e9ssage 1"
        ),
        received(1),
    ),
    "nul and controls in a text": lambda: accepted(
        ONE.replace(b"message 1", b"\\u0000\\u0001\\u001f\\u2028\\ufeff"), received(1)
    ),
    # Duplicate keys: the last one counts, as for every JSON parser Meta's could be read by.
    "duplicate id key": lambda: accepted(
        ONE.replace(b'"id":"wamid.HOSTILE1"', b'"id":"wamid.HOSTILE9","id":"wamid.HOSTILE1"'),
        received(1),
    ),
    "duplicate messages key": lambda: accepted(
        ONE.replace(b'"messages":[', b'"messages":[],"messages":['), received(1)
    ),
    "same message twice in one body": lambda: accepted(
        wire(notification(message(1), message(1), message(2))),
        received(1),
        received(2),
        duplicates=1,
    ),
    # Size: a 2.5 MB text fits under the cap; 5 MB is refused before it is read whole.
    "2.5 MB text": lambda: accepted(
        wire(notification(message(1, text={"body": "\u00e9" * (2_500_000 // 6)}))), received(1)
    ),
    "5 MB text": lambda: Hostile(
        body=wire(notification(message(1, text={"body": "x" * 5_000_000}))),
        status=413,
        answer="larger than",
    ),
    # Count: Meta batches at most 1000 updates; past ten times that, a body is not its own.
    "10001 items in one body": lambda: refused(
        wire(notification(*range(MAX_ITEMS + 1))), f"{MAX_ITEMS + 1} messages and statuses"
    ),
    # Content-Type is not what authenticates a notification: the signature is.
    "wrong content type": lambda: accepted(ONE, received(1), content_type="text/plain"),
    "no content type": lambda: accepted(ONE, received(1), content_type=None),
}


def headers(case: Hostile, signature: str | None) -> dict[str, str]:
    found = {} if signature is None else {"X-Hub-Signature-256": signature}
    if case.content_type is not None:
        found["Content-Type"] = case.content_type
    return found


async def post(http: httpx.AsyncClient, webhook: Webhook, case: Hostile) -> httpx.Response:
    signature = signed_headers(case.body)["X-Hub-Signature-256"]
    return await http.post(webhook.url + PATH, content=case.body, headers=headers(case, signature))


async def assert_still_answering(http: httpx.AsyncClient, webhook: Webhook) -> None:
    body = messages_notification(text_message("wamid.AFTER", "15550009876", "still there?"))
    response = await http.post(webhook.url + PATH, content=body, headers=signed_headers(body))
    assert response.status_code == 200
    assert response.json() == {"appended": 1, "duplicates": 0}


@pytest.mark.parametrize("name", list(CORPUS))
async def test_hostile_body_gets_its_answer(
    name: str, webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    case = CORPUS[name]()
    response = await post(http, webhook, case)
    assert response.status_code == case.status, response.text
    got = await all_entries(redis)  # every field decodes as UTF-8 text
    if case.status != 200:
        assert got == [], "a refused body appends nothing"
        assert case.answer in response.text, response.text
    else:
        assert response.json() == {"appended": len(case.appended), "duplicates": case.duplicates}
        assert len(got) == len(case.appended)
        for entry, (kind, message_id, reason) in zip(got, case.appended, strict=True):
            assert entry["type"] == kind
            if message_id == "raw:":
                assert entry["message_id"].startswith("raw:")
            else:
                assert entry["message_id"] == message_id
            if kind == "message.rejected":
                assert reason in entry["reason"], entry["reason"]
                json.loads(entry["raw"], parse_int=str)
            else:
                assert json.loads(entry["data"], parse_int=str)["id"] == entry["message_id"]
    await assert_still_answering(http, webhook)


async def test_unsigned_or_wrongly_signed_copies_get_401(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    """Every corpus body, unsigned, signed with another secret and signed for other bytes:
    401 (413 for the oversized, refused before it is read), and nothing appended."""
    for name, make in CORPUS.items():
        case = make()
        for signature in (None, sign(case.body, "not-the-secret"), sign(case.body + b" ", "x")):
            response = await http.post(
                webhook.url + PATH, content=case.body, headers=headers(case, signature)
            )
            expected = 413 if case.status == 413 else 401
            assert response.status_code == expected, (name, signature, response.text)
    assert await all_entries(redis) == []
    await assert_still_answering(http, webhook)


async def test_5000_messages_in_one_body_are_appended_once_each(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    messages = [
        text_message(f"wamid.MANY{i:05d}", f"1555{i % 500:07d}", f"message {i}", TIMESTAMP + i)
        for i in range(5000)
    ]
    body = messages_notification(*messages)
    assert len(body) < MAX_BODY
    async with httpx.AsyncClient(timeout=60) as client:  # a generous bound, not a benchmark
        response = await client.post(webhook.url + PATH, content=body, headers=signed_headers(body))
        assert response.status_code == 200
        assert response.json() == {"appended": 5000, "duplicates": 0}
        got = await entries(redis, MESSAGES)
        assert [e["message_id"] for e in got] == [m["id"] for m in messages]
        again = await client.post(webhook.url + PATH, content=body, headers=signed_headers(body))
        assert again.json() == {"appended": 0, "duplicates": 5000}
    assert await redis.xlen(MESSAGES) == 5000
    await assert_still_answering(http, webhook)


async def test_5_mb_streamed_without_a_length_gets_413_and_appends_nothing(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    body = CORPUS["5 MB text"]().body

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = await http.post(webhook.url + PATH, content=chunks(), headers=signed_headers(body))
    assert response.status_code == 413
    assert await all_entries(redis) == []
    await assert_still_answering(http, webhook)


def test_the_corpus_message_has_the_fixtures_shape() -> None:
    """The corpus starts from the same message shape as the shared fixtures."""
    fixture = json.loads(fixture_bytes("text_single.json"))
    shape = fixture["entry"][0]["changes"][0]["value"]["messages"][0]
    assert set(message(1)) == set(shape)


async def test_a_body_cut_off_by_a_disconnect_appends_nothing(
    webhook: Webhook, http: httpx.AsyncClient, redis: Redis
) -> None:
    """The client sends half the declared body and hangs up: the webhook stops waiting (400,
    to nobody) and appends nothing; Meta, having no 200, retries."""
    body = messages_notification(*(message(n) for n in range(50)))
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", webhook.port)
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    async def answered_400() -> bool:
        metrics = (await http.get(webhook.url + "/metrics")).text
        return 'zapstream_webhook_requests_total{code="400"} 1.0' in metrics

    await eventually(answered_400, timeout=10)
    assert await all_entries(redis) == []
    await assert_still_answering(http, webhook)
