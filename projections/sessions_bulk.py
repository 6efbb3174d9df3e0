"""A replay's bulk copy of the sessions model: XRANGE replies staged as they are, then
projected set-based, in the transaction that moves the checkpoint (SessionsTarget.apply_raw).

A chunk is COPYed into the temporary table `staged_entries` (each connection's own, emptied
by the commit): per entry its stream key, id, type, its fields joined by FIELD_SEP, `ok`,
and for a message.received its body, read from Meta's JSON here as sessions_rows reads it
(PostgreSQL 15 cannot try to parse JSON without failing the statement). `ok` says whether
the entry's fields match its type's layout (layouts.py; ints narrowed to what the columns
take and Python's datetime holds), checked here (PostgreSQL's regular expressions took 30
times as long). Then each write statement of sessions_sql.py that reads a type the
chunk holds (READS) runs once over it, its rows from a query over the ok entries (sources:
fields read by position, in the columns and with the values sessions_rows.Rows makes of
them); identities are only staged, and written to `sessions` once before the promotion
(`identities`). The entries left (REJECTED: an older `v` to upcast, another writer's field
order, undecodable) are read one by one by the per-entry code.
"""

from __future__ import annotations

from projections.follower import RawChunk, entry_fields
from projections.layouts import FIELD_SEP, LAYOUTS, Layout, reader
from projections.sessions_rows import message_body

# What the columns take: seconds Python's datetime holds (timestamptz), and int4.
_SECONDS = "0|[1-9][0-9]{0,10}"
_INT4 = "0|-?[1-9][0-9]{0,8}"
_NARROWER = {
    "message.received": {"timestamp": _SECONDS},
    "status.updated": {"timestamp": _SECONDS},
    "reply.generated": {"tokens": _INT4},
    "reply.superseded": {"tokens": _INT4},
    "reply.failed": {"code": _INT4},
}
# Whether an entry's fields are as its type's layout reads them (layouts.py).
_laid_out = reader(_NARROWER)
COLUMNS = ("stream_key", "stream", "entry_id", "type", "line", "ok", "body")
_SEP = FIELD_SEP.encode()


def staged_records(chunk: RawChunk) -> list[tuple[str, str, str, str, str, bool, str | None]]:
    """A chunk's rows of `staged_entries` (COLUMNS). Raises ValueError (UnicodeDecodeError
    included) when a value holds FIELD_SEP or is not UTF-8: the follower applies Items."""
    flat = [fields for _, fields in chunk.entries]
    joined = [_SEP.join(fields) for fields in flat]
    if sum(line.count(_SEP) for line in joined) != sum(map(len, flat)) - len(flat):
        raise ValueError("a field holds FIELD_SEP: not loadable in bulk")
    key, stream = chunk.key, chunk.stream
    records = []
    # One loop, few calls per entry: this runs for every entry of a rebuild.
    for (entry_id, fields), line in zip(chunk.entries, joined, strict=True):
        name = fields[1]  # the type when fields[0] is `type`; else not laid out
        ok = _laid_out(fields)
        body = None
        if ok and name == b"message.received":  # laid out as written: every field there
            body = message_body(fields[_KIND].decode(), fields[_DATA].decode())
        records.append((key, stream, entry_id.decode(), name.decode(), line.decode(), ok, body))
    return records


_RECEIVED = LAYOUTS["message.received"]
_KIND, _DATA = _RECEIVED.position("kind") - 1, _RECEIVED.position("data") - 1


_WITH_CUSTOMER = ("turn.ready", "reply.generated", "handoff.requested", "handoff.released")
_OUTCOMES = ("reply.sent", "reply.failed", "reply.blocked", "reply.superseded")
_HANDOFFS = ("handoff.requested", "handoff.released")
# The event types each write statement reads (a chunk's types pick the statements to run).
READS: dict[str, frozenset[str]] = {
    "inbound": frozenset({"message.received"}),
    "statuses": frozenset({"status.updated"}),
    "turn_messages": frozenset({"turn.ready"}),
    "turns_ready": frozenset({"turn.ready"}),
    "generated": frozenset({"reply.generated"}),
    "outcomes": frozenset(_OUTCOMES),
    "outbound": frozenset({"reply.sent"}),
    "handoffs": frozenset(_HANDOFFS),
    "staged_identities": frozenset({"message.received", *_WITH_CUSTOMER, *_OUTCOMES}),
}


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Each connection's own table (a lane's transaction sees only its chunk), emptied by commit.
STAGED_ENTRIES = """CREATE TEMP TABLE staged_entries (
    stream_key text NOT NULL, stream text NOT NULL, entry_id text NOT NULL,
    type text NOT NULL, line text NOT NULL, ok boolean NOT NULL, body text
) ON COMMIT DELETE ROWS"""


def create_staged(s: str) -> str:
    """`staged_identities` in schema `s` (quoted): every session's identity seen, written
    once (`identities`) rather than merged into `sessions` chunk after chunk."""
    return f"""CREATE UNLOGGED TABLE {s}.staged_identities (
        session_id text NOT NULL, wa_id text NOT NULL, customer text NOT NULL,
        phone_number_id text NOT NULL
    )"""


def stage_identities(s: str) -> str:
    """The staged chunk's identities, kept for `identities(s)`."""
    return f"INSERT INTO {s}.staged_identities {_identities(s)}"


def identities(s: str) -> str:
    """Every session's identity, the greatest of each seen (Rows._session)."""
    return f"""SELECT session_id, max(wa_id), max(customer), max(phone_number_id)
        FROM {s}.staged_identities GROUP BY session_id"""


def drop_staged(s: str) -> str:
    return f"DROP TABLE IF EXISTS {s}.staged_identities"


# The staged entries the sources leave: the per-entry code reads them.
REJECTED = "SELECT stream_key, stream, entry_id, line FROM pg_temp.staged_entries WHERE NOT ok"


def split_line(line: str) -> dict[bytes, bytes]:
    """A staged entry's fields as Follower's decode() takes them."""
    return entry_fields(line.encode().split(_SEP))


# -- SOURCES: the rows of each write statement (sessions_sql.ARRAY_TYPES' columns) ----------


def _part(name: str, field: str) -> str:
    """Field `field` of a `name` entry ('' when the entry lacks it)."""
    return f"split_part(line, chr(31), {LAYOUTS[name].position(field)})"


def _int(name: str, field: str) -> str:
    layout: Layout = LAYOUTS[name]
    default = layout.defaults.get(field, 0)
    return f"coalesce(nullif({_part(name, field)}, ''), '{default}')::bigint"


def _list(name: str, field: str) -> str:
    return f"coalesce(nullif({_part(name, field)}, ''), '[]')::jsonb"


def _seconds(name: str, field: str) -> str:
    return f"to_timestamp({_int(name, field)})"


# The entry id's milliseconds, exactly (to_timestamp's double would round).
_AT = (
    "(to_timestamp(split_part(entry_id, '-', 1)::bigint / 1000) "
    "+ (split_part(entry_id, '-', 1)::bigint % 1000) * interval '1 millisecond')"
)


def _of(s: str, *names: str) -> str:
    return f"pg_temp.staged_entries WHERE ok AND type IN ({', '.join(map(_literal, names))})"


def _outcome(s: str, name: str, outcome: str, code: str, reason: str) -> str:
    return (
        f"SELECT {_part(name, 'reply_id')}, {_part(name, 'session_id')}, "
        f"{_part(name, 'turn_id')}, '{outcome}', {_AT}, {code}, {reason} FROM {_of(s, name)}"
    )


def _by_type(field: str, names: tuple[str, ...]) -> str:
    """Field `field` of an entry of any of `names`; '' for another type."""
    cases = " ".join(f"WHEN {_literal(name)} THEN {_part(name, field)}" for name in names)
    return f"CASE type {cases} ELSE '' END"


def _identities(s: str) -> str:
    """The identities of the staged chunk's sessions, in one scan (the columns of
    `staged_identities`)."""
    received = "message.received"
    known = (received, *_WITH_CUSTOMER)
    return f"""SELECT * FROM (
            SELECT split_part(line, chr(31), {LAYOUTS[received].position("session_id")}),
                {_by_type("from", (received,))}, {_by_type("customer", known)},
                {_by_type("phone_number_id", known)}
            FROM {_of(s, *known, *_OUTCOMES)}) AS i(session_id, wa_id, customer, phone_number_id)
        WHERE session_id <> ''"""


def sources(s: str) -> dict[str, str]:
    """Each write statement's rows (by its name in sessions_sql.ARRAY_TYPES) from the ok
    staged entries of schema `s` (quoted), as Rows.add makes them."""
    received, sent = "message.received", "reply.sent"
    wamids = _list(sent, "wamids")
    return {
        "inbound": f"""SELECT {_part(received, "message_id")}, {_part(received, "session_id")},
            {_part(received, "kind")}, body, {_seconds(received, "timestamp")}
            FROM {_of(s, received)}""",
        "statuses": f"""SELECT {_part("status.updated", "message_id")},
            {_part("status.updated", "status")}, {_seconds("status.updated", "timestamp")}
            FROM {_of(s, "status.updated")}""",
        "turn_messages": f"""SELECT w, {_part("turn.ready", "session_id")},
            {_part("turn.ready", "turn_id")}
            FROM pg_temp.staged_entries,
                jsonb_array_elements_text({_list("turn.ready", "message_ids")}) AS w
            WHERE ok AND type = 'turn.ready'""",
        "turns_ready": f"""SELECT {_part("turn.ready", "session_id")},
            {_part("turn.ready", "turn_id")},
            jsonb_array_length({_list("turn.ready", "message_ids")}), {_AT}
            FROM {_of(s, "turn.ready")}""",
        "generated": f"""SELECT {_part("reply.generated", "reply_id")},
            {_part("reply.generated", "session_id")}, {_part("reply.generated", "turn_id")},
            {_part("reply.generated", "body")}, {_int("reply.generated", "tokens")}::int, {_AT}
            FROM {_of(s, "reply.generated")}""",
        "outcomes": " UNION ALL ".join(
            [
                _outcome(s, sent, "sent", "NULL::int", "''"),
                _outcome(
                    s,
                    "reply.failed",
                    "failed",
                    f"{_int('reply.failed', 'code')}::int",
                    _part("reply.failed", "reason"),
                ),
                _outcome(
                    s, "reply.blocked", "blocked", "NULL::int", _part("reply.blocked", "reason")
                ),
                _outcome(s, "reply.superseded", "superseded", "NULL::int", "''"),
            ]
        ),
        # A reply.sent without wamids (v1, upcast) names its one part in message_id.
        "outbound": f"""SELECT w, {_part(sent, "session_id")}, {_part(sent, "reply_id")},
            {_part(sent, "turn_id")}, {_AT}
            FROM pg_temp.staged_entries, jsonb_array_elements_text(CASE
                WHEN jsonb_array_length({wamids}) > 0 THEN {wamids}
                ELSE jsonb_build_array({_part(sent, "message_id")}) END) AS w
            WHERE ok AND type = 'reply.sent' AND w <> ''""",
        "handoffs": " UNION ALL ".join(
            f"""SELECT {_part(name, "session_id")}, entry_id, '{kind}', {_part(name, "turn_id")},
                {_AT} FROM {_of(s, name)}"""
            for name, kind in zip(_HANDOFFS, ("requested", "released"), strict=True)
        ),
        "identities": identities(s),
    }
