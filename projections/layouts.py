"""How encode_fields lays out each event type's entry, for the bulk readers of a replay's copy.

An entry is `type`, `v`, `session_id`, then the event's own fields in declaration order
(zapstream/envelope.py); a field added later comes last, with a default, so an entry written
before lacks the last ones. A Layout says what decode_fields checks of each field, so that a
bulk reader (analytics_bulk.py, sessions_bulk.py) can take an entry as it is exactly when
decode_fields would read it as such, and leave any other to the per-entry way: `reader`
checks an entry's fields for that.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from zapstream.events import EVENT_TYPES

FIELD_SEP = "\x1f"  # ASCII's unit separator, between an entry's fields and values
PLAIN_INT = "0|-?[1-9][0-9]{0,17}"  # an int as encode_fields writes it (and fast_row reads)
_STRING = r'"[^"\\\x01-\x1f]*"'  # a JSON string without escapes
FLAT_LIST = rf"\[(?:{_STRING}(?:,{_STRING})*)?\]"  # a list[str] as msgspec writes it


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    """An event type's entry as encode_fields writes it, and what decode_fields checks."""

    name: str  # the event type
    version: int  # its current `v`
    fields: tuple[str, ...]  # after `type` and `v`, in the order written
    required: frozenset[str]  # fields without a default
    ints: tuple[str, ...]
    lists: tuple[str, ...]  # list[str], JSON in the entry
    defaults: dict[str, Any]

    def position(self, field: str) -> int:
        """The 1-based place of `field`'s value among the entry's parts (key, value, ...)."""
        return 2 * self.fields.index(field) + 6

    def names(self) -> list[tuple[bytes, ...]]:
        """The field names of an entry laid out as written: every field, or all but the last
        few that may be missing (only from the end, as fields are added there)."""
        least = max((i + 1 for i, f in enumerate(self.fields) if not self.optional(f)), default=0)
        every = (b"type", b"v", *(field.encode() for field in self.fields))
        return [every[: n + 2] for n in range(least, len(self.fields) + 1)]

    def optional(self, field: str) -> bool:
        """Whether an entry may lack `field` and read as if it held the default: a str field
        missing reads as '', so one with another default must be there."""
        if field in self.required:
            return False
        return field in self.ints or field in self.lists or self.defaults[field] == ""


Check = tuple[int, "re.Pattern[bytes]"]  # the index of a value among an entry's fields, its form


def reader(ints: dict[str, dict[str, str]]) -> Callable[[list[bytes]], bool]:
    """A check of an entry's flat fields ([name, value, ...] as XRANGE returns them): whether
    decode_fields reads it exactly as laid out by encode_fields, at its type's current `v`,
    ints in plain decimal, lists flat JSON arrays of plain strings. `ints` narrows the form
    of some int fields, by type (to what a target's columns hold)."""
    known: dict[tuple[bytes, tuple[bytes, ...]], tuple[bytes, tuple[Check, ...]]] = {}
    for name, layout in LAYOUTS.items():
        narrower = ints.get(name, {})
        checks = tuple(
            (layout.position(field) - 1, re.compile(narrower.get(field, PLAIN_INT).encode()))
            for field in layout.ints
        ) + tuple(
            (layout.position(field) - 1, re.compile(FLAT_LIST.encode())) for field in layout.lists
        )
        for names in layout.names():
            known[(name.encode(), names)] = (str(layout.version).encode(), checks)

    def laid_out(fields: list[bytes]) -> bool:
        found = known.get((fields[1], tuple(fields[::2])))
        if found is None:
            return False
        version, checks = found
        if fields[3] != version:
            return False
        for index, form in checks:
            if index < len(fields) and form.fullmatch(fields[index]) is None:
                return False
        return True

    return laid_out


def _layout(name: str) -> Layout | None:
    """The layout of event type `name`; None when a field is of another type than str, int
    or list[str] (the per-entry way reads those)."""
    info = msgspec.inspect.type_info(EVENT_TYPES[name])
    assert isinstance(info, msgspec.inspect.StructType)
    required, ints, lists, defaults = set(), [], [], {}
    for field in info.fields:
        kind = field.type
        if isinstance(kind, msgspec.inspect.IntType) and not (kind.ge or kind.gt or kind.le):
            ints.append(field.encode_name)
        elif isinstance(kind, msgspec.inspect.ListType) and isinstance(
            kind.item_type, msgspec.inspect.StrType
        ):
            lists.append(field.encode_name)
        elif not isinstance(kind, msgspec.inspect.StrType) or kind.min_length or kind.pattern:
            return None
        if field.required:
            required.add(field.encode_name)
        elif field.default is not msgspec.NODEFAULT:
            defaults[field.encode_name] = field.default
        else:
            defaults[field.encode_name] = field.default_factory()
    names = [f.encode_name for f in info.fields if f.encode_name != "session_id"]
    return Layout(
        name=name,
        version=EVENT_TYPES[name].version,
        fields=("session_id", *names),
        required=frozenset(required),
        ints=tuple(ints),
        lists=tuple(lists),
        defaults=defaults,
    )


LAYOUTS = {name: layout for name in EVENT_TYPES if (layout := _layout(name)) is not None}
