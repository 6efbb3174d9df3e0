"""The only code that turns an event into flat UTF-8 stream fields and back.

An entry's fields are `type`, `v`, `session_id`, then the event's own fields in declaration
order. Text stays text, numbers are decimal, and nested data is JSON, so that
`redis-cli XRANGE` shows a readable event.

Entries of an older `v` (the archive keeps them for years) are upcast when read: UPCASTERS
holds one function per (type, version) that turns that version's fields into the next
version's, applied in a chain up to the current one. An event type whose shape changes gets
a new `version` and an upcaster here; nothing rewrites the log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from zapstream.events import EVENT_TYPES, Event


class UnknownEventError(ValueError):
    """An entry whose `type` or `v` this version of zapstream cannot read."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """An event as read from the log, with where it was read from."""

    stream: str
    entry_id: str
    event: Event


_json_encoder = msgspec.json.Encoder()


def _json_fields(cls: type[Event]) -> frozenset[str]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    plain = (
        msgspec.inspect.StrType,
        msgspec.inspect.IntType,
        msgspec.inspect.FloatType,
        msgspec.inspect.BoolType,
    )
    return frozenset(f.encode_name for f in info.fields if not isinstance(f.type, plain))


Fields = dict[str, Any]  # an entry's text fields, `type` included, `v` removed
Upcaster = Callable[[Fields], Fields]


def _reply_sent_v1(fields: Fields) -> Fields:
    """reply.sent v1 named only the first part's wamid; v2 lists every part in `wamids`."""
    if "wamids" not in fields:
        fields["wamids"] = _json_encoder.encode([fields.get("message_id", "")]).decode()
    return fields


# (type, version) -> the upcaster from that version to the next.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("reply.sent", 1): _reply_sent_v1,
}


_JSON_FIELDS = {name: _json_fields(cls) for name, cls in EVENT_TYPES.items()}
_json_decoder = msgspec.json.Decoder()


def encode_fields(event: Event) -> dict[str, str]:
    """Flat fields for XADD: type, v, session_id first, then the event's own."""
    cls = type(event)
    builtins: dict[str, Any] = msgspec.to_builtins(event)
    name = builtins.pop("type")
    fields = {"type": name, "v": str(cls.version), "session_id": builtins.pop("session_id")}
    for key, value in builtins.items():
        if isinstance(value, str):
            fields[key] = value
        elif isinstance(value, bool):
            fields[key] = "1" if value else "0"
        elif isinstance(value, int | float):
            fields[key] = str(value)
        else:
            fields[key] = _json_encoder.encode(value).decode("utf-8")
    return fields


def decode_fields(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Event:
    """The event an entry holds; raises UnknownEventError or msgspec.ValidationError."""
    values: dict[str, Any] = {_text(k): _text(v) for k, v in fields.items()}
    name = values.get("type", "")
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise UnknownEventError(f"unknown event type {name!r}")
    values = _upcast(name, values.pop("v", "1"), values, cls.version)
    for key in _JSON_FIELDS[name]:
        if key in values:
            values[key] = _json_decoder.decode(values[key])
    return msgspec.convert(values, cls, strict=False)


def upcast_fields(name: str, values: Fields) -> Fields:
    """An entry's text fields (`v` included) of event type `name`, upcast to its current
    version and `v` removed, as decode_fields reads them; raises UnknownEventError."""
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise UnknownEventError(f"unknown event type {name!r}")
    return _upcast(name, values.pop("v", "1"), values, cls.version)


def _upcast(name: str, version: str, values: Fields, current: int) -> Fields:
    number = int(version) if version.isdigit() else 0
    while 1 <= number < current and (name, number) in UPCASTERS:
        values = UPCASTERS[(name, number)](values)
        number += 1
    if number != current:
        raise UnknownEventError(
            f"{name} v{version} is not readable (this version reads v{current})"
        )
    return values


def decode_entry(stream: str, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Envelope:
    return Envelope(stream=_text(stream), entry_id=_text(entry_id), event=decode_fields(fields))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
