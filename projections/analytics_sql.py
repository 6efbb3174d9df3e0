"""The analytics model's DuckDB schema: the tables, the insert of `events` rows, the views.

`events` has a column for each field of analytics_rows.Row; `checkpoint(stream_key,
entry_id)` says where each stream was landed up to, `projection_errors(stream_key, entry_id,
reason)` records the undecodable entries. `INSERT_EVENTS` takes a batch's rows as a list of
JSON strings that DuckDB parses in bulk (`from_json`): about 200,000 rows/s without pyarrow
or pandas (executemany manages about 1,500).

Derived relations are views over `events`, set-based SQL that reads no wall clock and does
not depend on the order the streams were landed in (live following and replay interleave
them differently): duplicates are resolved in the log's own order (at_ms, seq, stream_key),
the first kept (the last for a turn's outcome). Times are UTC TIMESTAMPs; latencies are
seconds (DOUBLE).
  messages           inbound message.received (created_at: WhatsApp's timestamp) and outbound
                     reply.sent parts (created_at: when reply.sent was appended)
  turns              one per turn.ready: first message (WhatsApp's timestamp), ready, reply
                     generated, replied (sent), delivered, read (WhatsApp's status
                     timestamps), outcome (the reply's last outcome event), tokens, and the
                     latencies between them; response_s runs from the first message the reply
                     answers (superseded turns' included) to reply.sent
  daily_volume       messages per UTC day, direction and type
  handoff_rate       sessions (with an inbound message), those with a handoff.requested, rate
  superseded_replies each reply.superseded and its token cost
  send_failures      reply.failed by WhatsApp error code (source `send`) and failed statuses
                     by the code Meta gave (source `delivery`)
"""

from __future__ import annotations

import msgspec

from projections.analytics_rows import Row

DERIVED = (
    "messages",
    "turns",
    "daily_volume",
    "handoff_rate",
    "superseded_replies",
    "send_failures",
)


def _sql_type(info: msgspec.inspect.Type) -> str:
    if isinstance(info, msgspec.inspect.UnionType):  # X | None
        (info,) = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
    if isinstance(info, msgspec.inspect.StrType):
        return "VARCHAR"
    if isinstance(info, msgspec.inspect.IntType):
        return "BIGINT"
    if isinstance(info, msgspec.inspect.ListType):
        return f"{_sql_type(info.item_type)}[]"
    raise TypeError(f"no DuckDB type for {info!r}")


def _columns() -> tuple[tuple[str, str], ...]:
    info = msgspec.inspect.type_info(Row)
    assert isinstance(info, msgspec.inspect.StructType)
    return tuple((f.encode_name, _sql_type(f.type)) for f in info.fields)


EVENT_COLUMNS = _columns()
_ROW_STRUCT = "{" + ", ".join(f'"{name}": "{sql}"' for name, sql in EVENT_COLUMNS) + "}"
INSERT_EVENTS = (
    f"INSERT INTO events BY NAME SELECT unnest(from_json(line, '{_ROW_STRUCT}')) "
    "FROM (SELECT unnest($1::VARCHAR[]) AS line)"
)

TABLES = f"""
CREATE TABLE IF NOT EXISTS events ({", ".join(f"{n} {t}" for n, t in EVENT_COLUMNS)});
CREATE TABLE IF NOT EXISTS checkpoint (stream_key VARCHAR NOT NULL, entry_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS projection_errors (
    stream_key VARCHAR NOT NULL, entry_id VARCHAR NOT NULL, reason VARCHAR NOT NULL
);
"""

# The first of duplicates, in the log's own order (never the order they were landed in).
_FIRST = "row_number() OVER (PARTITION BY {} ORDER BY at_ms, seq, stream_key) = 1"
_LAST = "row_number() OVER (PARTITION BY {} ORDER BY at_ms DESC, seq DESC, stream_key DESC) = 1"

VIEWS = f"""
CREATE OR REPLACE VIEW messages AS
WITH inbound AS (
    SELECT message_id, session_id, 'in' AS direction, kind AS type,
           epoch_ms(ts * 1000) AS created_at, at_ms, seq, stream_key
    FROM events WHERE type = 'message.received'
), outbound AS (
    SELECT unnest(CASE WHEN len(coalesce(wamids, [])) > 0 THEN wamids ELSE [message_id] END)
               AS message_id,
           session_id, 'out' AS direction, 'text' AS type, epoch_ms(at_ms) AS created_at,
           at_ms, seq, stream_key
    FROM events WHERE type = 'reply.sent'
), every AS (SELECT * FROM inbound UNION ALL SELECT * FROM outbound)
SELECT message_id, session_id, direction, type, created_at FROM every
QUALIFY {_FIRST.format("direction, message_id")};

CREATE OR REPLACE VIEW turns AS
WITH ready AS (
    SELECT session_id, turn_id, message_ids, at_ms FROM events WHERE type = 'turn.ready'
    QUALIFY {_FIRST.format("session_id, turn_id")}
), inbound AS (
    SELECT message_id, min(ts) AS ts FROM events WHERE type = 'message.received'
    GROUP BY message_id
), first_message AS (
    SELECT r.session_id, r.turn_id, min(i.ts) AS ts
    FROM ready AS r, unnest(r.message_ids) AS u(message_id), inbound AS i
    WHERE i.message_id = u.message_id
    GROUP BY r.session_id, r.turn_id
), generated AS (
    SELECT session_id, turn_id, at_ms, tokens, message_ids
    FROM events WHERE type = 'reply.generated'
    QUALIFY {_FIRST.format("session_id, turn_id")}
), first_answered AS (
    SELECT g.session_id, g.turn_id, min(i.ts) AS ts
    FROM generated AS g, unnest(g.message_ids) AS u(message_id), inbound AS i
    WHERE i.message_id = u.message_id
    GROUP BY g.session_id, g.turn_id
), sent AS (
    SELECT session_id, turn_id, at_ms, message_id AS wamid
    FROM events WHERE type = 'reply.sent'
    QUALIFY {_FIRST.format("session_id, turn_id")}
), outcome AS (
    SELECT session_id, turn_id, replace(type, 'reply.', '') AS outcome
    FROM events
    WHERE type IN ('reply.sent', 'reply.failed', 'reply.blocked', 'reply.superseded')
    QUALIFY {_LAST.format("session_id, turn_id")}
), statuses AS (
    SELECT message_id AS wamid,
           min(ts) FILTER (WHERE status = 'delivered') AS delivered_ts,
           min(ts) FILTER (WHERE status = 'read') AS read_ts
    FROM events WHERE type = 'status.updated'
    GROUP BY message_id
)
SELECT
    r.session_id,
    r.turn_id,
    len(r.message_ids) AS message_count,
    epoch_ms(f.ts * 1000) AS first_message_at,
    epoch_ms(r.at_ms) AS ready_at,
    epoch_ms(s.at_ms) AS replied_at,
    epoch_ms(g.at_ms) AS generated_at,
    epoch_ms(st.delivered_ts * 1000) AS delivered_at,
    epoch_ms(st.read_ts * 1000) AS read_at,
    o.outcome,
    g.tokens,
    (r.at_ms - f.ts * 1000) / 1000 AS ready_s,
    (g.at_ms - r.at_ms) / 1000 AS generate_s,
    (s.at_ms - g.at_ms) / 1000 AS send_s,
    (s.at_ms - coalesce(a.ts, f.ts) * 1000) / 1000 AS response_s,
    (st.delivered_ts * 1000 - s.at_ms) / 1000 AS delivered_s,
    (st.read_ts * 1000 - s.at_ms) / 1000 AS read_s
FROM ready AS r
LEFT JOIN first_message AS f ON f.session_id = r.session_id AND f.turn_id = r.turn_id
LEFT JOIN generated AS g ON g.session_id = r.session_id AND g.turn_id = r.turn_id
LEFT JOIN first_answered AS a ON a.session_id = r.session_id AND a.turn_id = r.turn_id
LEFT JOIN sent AS s ON s.session_id = r.session_id AND s.turn_id = r.turn_id
LEFT JOIN outcome AS o ON o.session_id = r.session_id AND o.turn_id = r.turn_id
LEFT JOIN statuses AS st ON st.wamid = s.wamid;

CREATE OR REPLACE VIEW daily_volume AS
SELECT CAST(created_at AS DATE) AS day, direction, type, count(*) AS messages
FROM messages GROUP BY ALL;

CREATE OR REPLACE VIEW handoff_rate AS
WITH counts AS (
    SELECT
        (SELECT count(DISTINCT session_id) FROM events
         WHERE type = 'message.received' AND session_id <> '') AS sessions,
        (SELECT count(DISTINCT session_id) FROM events
         WHERE type = 'handoff.requested' AND session_id <> '') AS handed_off
)
SELECT sessions, handed_off, CASE WHEN sessions > 0 THEN handed_off / sessions END AS rate
FROM counts;

CREATE OR REPLACE VIEW superseded_replies AS
WITH superseded AS (
    SELECT session_id, turn_id, reply_id, tokens, at_ms
    FROM events WHERE type = 'reply.superseded'
    QUALIFY {_FIRST.format("reply_id")}
), generated AS (
    SELECT reply_id, max(tokens) AS tokens FROM events WHERE type = 'reply.generated'
    GROUP BY reply_id
)
SELECT s.session_id, s.turn_id, s.reply_id,
       CASE WHEN s.tokens > 0 THEN s.tokens ELSE coalesce(g.tokens, 0) END AS tokens,
       epoch_ms(s.at_ms) AS superseded_at
FROM superseded AS s LEFT JOIN generated AS g ON g.reply_id = s.reply_id;

CREATE OR REPLACE VIEW send_failures AS
WITH failed AS (
    SELECT 'send' AS source, code FROM events WHERE type = 'reply.failed'
    QUALIFY {_FIRST.format("reply_id")}
), undelivered AS (
    SELECT 'delivery' AS source, code FROM events
    WHERE type = 'status.updated' AND status = 'failed'
    QUALIFY {_FIRST.format("message_id")}
)
SELECT source, code, count(*) AS failures
FROM (SELECT * FROM failed UNION ALL SELECT * FROM undelivered)
GROUP BY ALL;
"""
