"""Landing XRANGE replies in `events` in bulk (a replay's copy), with no Python object per entry.

A chunk becomes three strings (`join_chunk`, bytes.join in C): its entry ids, its entries'
field names and their values. DuckDB splits them and reads them set-based: land() lands an
entry, as event_row would make it, when it is exactly what fast_row would read: the fields
of its type in the order encode_fields writes them (the last ones, added later with a
default, may be missing), its type's current `v`, ints in plain decimal, lists flat JSON
arrays of plain strings, and not a failed status (its code is in Meta's JSON). When it lands
fewer than the chunk holds, rejected() names the others, which the caller reads one by one
(AnalyticsTarget.decode_entry: an older `v` upcast, another writer's field order, an
undecodable entry recorded). An entry in doubt takes that way.
"""

from __future__ import annotations

import functools
from typing import Any

from projections.analytics_rows import PLANS, Plan
from projections.analytics_sql import EVENT_COLUMNS
from projections.layouts import FLAT_LIST, LAYOUTS, PLAIN_INT
from zapstream.events import EVENT_TYPES

ENTRY_SEP, FIELD_SEP = b"\x1e", b"\x1f"  # ASCII's record and unit separators
_FIELD_SEP = FIELD_SEP.decode()
_COMMON = ("entry_id", "stream_key", "stream", "type", "session_id", "at_ms", "seq")


def join_chunk(entries: list[Any]) -> tuple[list[str], frozenset[str]]:
    """A chunk as land()'s first three parameters (its ids; its entries' field names, and
    their values, each entry's joined by FIELD_SEP), and its entries' types. Raises
    ValueError (UnicodeDecodeError included) when a field holds a separator or NUL or is not
    UTF-8."""
    flat = [fields for _, fields in entries]
    ids = ENTRY_SEP.join([entry_id for entry_id, _ in entries])
    keys = ENTRY_SEP.join([FIELD_SEP.join(fields[::2]) for fields in flat])
    values = ENTRY_SEP.join([FIELD_SEP.join(fields[1::2]) for fields in flat])
    if (
        keys.count(FIELD_SEP) + values.count(FIELD_SEP) != sum(map(len, flat)) - 2 * len(flat)
        or keys.count(ENTRY_SEP) + values.count(ENTRY_SEP) != 2 * (len(flat) - 1)
        or b"\x00" in keys
        or b"\x00" in values
    ):
        raise ValueError("a field holds a separator or NUL: not loadable in bulk")
    types = frozenset(name.decode() for name in {fields[1] for fields in flat if len(fields) > 1})
    return [ids.decode(), keys.decode(), values.decode()], types


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _readable(name: str, plan: Plan, layout: list[str]) -> str:
    """Whether an entry of type `name` (its field names k, its values p[]) reads as fast_row
    reads it, at the positions of `layout` (see the module's doc)."""
    # Fields are added at the end, with defaults: an entry written before lacks the last ones.
    least = max(layout.index(field) for field in ("v", *plan.layout.required)) + 1
    names = [_literal(_FIELD_SEP.join(layout[:n])) for n in range(len(layout), least - 1, -1)]
    checks = [f"k IN ({', '.join(names)})", f"p[2] = '{EVENT_TYPES[name].version}'"]
    for field in (*plan.layout.ints, *plan.layout.lists):
        pattern = PLAIN_INT if field in plan.layout.ints else FLAT_LIST
        part = _part(layout, field)
        checks.append(f"({part} IS NULL OR regexp_full_match({part}, '{pattern}'))")
    if name == "status.updated":
        checks.append(f"{_part(layout, 'status')} <> 'failed'")
    return " AND ".join(checks)


def _part(layout: list[str], field: str) -> str:
    """The value of `field` among an entry's values p[] (1-based), NULL when the entry is
    shorter."""
    return f"p[{layout.index(field) + 1}]"


def _value(plan: Plan, layout: list[str], field: str) -> str:
    """The value event_row lands from `field`, its default when the entry lacks it."""
    part = _part(layout, field)
    default = plan.layout.defaults.get(field)
    if field in plan.layout.ints:
        return f"coalesce(CAST({part} AS BIGINT), {default or 0})"
    if field in plan.layout.lists:
        items = ", ".join(map(_literal, default or []))
        return f"""coalesce(from_json({part}, '["VARCHAR"]'), CAST([{items}] AS VARCHAR[]))"""
    return f"coalesce({part}, {_literal(default or '')})"


# Each type's fields in the order encode_fields writes them, `type` and `v` first.
_LAYOUTS = {name: ["type", "v", *LAYOUTS[name].fields] for name in PLANS}


def _ok(types: tuple[str, ...]) -> str:
    cases = " ".join(
        f"WHEN {_literal(name)} THEN {_readable(name, PLANS[name], _LAYOUTS[name])}"
        for name in types
    )
    return f"coalesce(CASE p[1] {cases} ELSE false END, false)" if types else "false"


def _column(column: str, types: tuple[str, ...]) -> str:
    cases = [
        f"WHEN {_literal(name)} THEN {_value(PLANS[name], _LAYOUTS[name], field)}"
        for name in types
        for landed, field in PLANS[name].columns
        if landed == column
    ]
    return f"CASE p[1] {' '.join(cases)} END AS {column}" if cases else f"NULL AS {column}"


_PARTS = """WITH entries AS (
    SELECT unnest(string_split($1, chr(30))) AS entry_id,
           unnest(string_split($2, chr(30))) AS k,
           unnest(string_split($3, chr(30))) AS line
), parts AS (
    SELECT entry_id, k, string_split(line, chr(31)) AS p FROM entries
)"""


@functools.cache
def land(types: frozenset[str]) -> str:
    """The INSERT of a chunk's entries of `types` (the types it holds: a CASE over every
    type would compare each entry's type with each); its parameters $1, $2, $3: join_chunk's,
    $4: the chunk's stream key, $5: its stream."""
    known = tuple(sorted(types & PLANS.keys()))
    columns = (_column(name, known) for name, _ in EVENT_COLUMNS if name not in _COMMON)
    return f"""
INSERT INTO events BY NAME
{_PARTS}
SELECT entry_id, $4 AS stream_key, $5 AS stream, p[1] AS type, p[3] AS session_id,
       CAST(split_part(entry_id, '-', 1) AS BIGINT) AS at_ms,
       CAST(split_part(entry_id, '-', 2) AS BIGINT) AS seq,
       {", ".join(columns)}
FROM parts WHERE {_ok(known)}
"""


@functools.cache
def rejected(types: frozenset[str]) -> str:
    """The entries land(types) leaves; $1, $2, $3: as its."""
    known = tuple(sorted(types & PLANS.keys()))
    return f"{_PARTS} SELECT entry_id FROM parts WHERE NOT {_ok(known)}"
