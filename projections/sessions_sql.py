"""The SQL of the sessions read model, one set of statements per schema.

Each write statement takes a whole batch's rows of one kind as arrays (one parameter per
column, read with unnest()) and merges a repeated key by a fixed rule (the least or the
furthest value), so rows are a function of the set of events applied, never of their order.
The refresh statements derive, for the batch's keys only, what depends on several events (a
message's status, a session's status, its first and last message); the derive statements do
the same over the whole schema, once, for a replay's bulk copy.
"""

from __future__ import annotations

from collections.abc import Mapping

from projections.follower import START

# Outcomes of a reply, from the nearest to the furthest: a turn shows its furthest, and a
# sent reply stays sent whatever arrives after.
_RANK = "array_position(ARRAY['generated','superseded','blocked','failed','sent']::text[], {})"


# The array parameters of each write statement, one per column.
ARRAY_TYPES = {
    "inbound": ("text", "text", "text", "text", "timestamptz"),
    "statuses": ("text", "text", "timestamptz"),
    "turn_messages": ("text", "text", "text"),
    "turns_ready": ("text", "text", "int", "timestamptz"),
    "generated": ("text", "text", "text", "text", "int", "timestamptz"),
    "outcomes": ("text", "text", "text", "text", "timestamptz", "int", "text"),
    "outbound": ("text", "text", "text", "text", "timestamptz"),
    "handoffs": ("text", "text", "text", "text", "timestamptz"),
    "identities": ("text", "text", "text", "text"),
}


class Statements:
    """The SQL of one schema. Each statement writes a whole batch's rows of one kind."""

    def __init__(self, s: str, sources: Mapping[str, str] | None = None) -> None:
        """`sources`: each write statement's rows from a query (by the statement's name)
        instead of from arrays, one parameter per column (a replay's bulk copy, see
        sessions_bulk.py); a query's columns are in the order of the arrays'."""

        def source(name: str) -> str:
            if sources is not None:
                return f"({sources[name]})"
            arrays = (f"${i}::{t}[]" for i, t in enumerate(ARRAY_TYPES[name], start=1))
            return f"unnest({', '.join(arrays)})"

        self.positions = f"SELECT stream_key, position FROM {s}.checkpoint"
        self.lock_checkpoint = f"""
            SELECT stream_key, position FROM {s}.checkpoint
            WHERE stream_key = ANY($1::text[]) ORDER BY stream_key FOR UPDATE"""
        self.insert_checkpoint = f"""
            INSERT INTO {s}.checkpoint (stream_key, position)
            SELECT key, '{START}' FROM unnest($1::text[]) AS k(key) ORDER BY key
            ON CONFLICT (stream_key) DO NOTHING"""
        self.move_checkpoint = f"""
            UPDATE {s}.checkpoint c SET position = n.position
            FROM unnest($1::text[], $2::text[]) AS n(stream_key, position)
            WHERE c.stream_key = n.stream_key"""
        # A wamid read twice keeps its least row; returns the sessions it was in before (a
        # bulk copy derives every session after: it looks up nothing, returns nothing).
        returns_nothing = "SELECT NULL::text AS session_id WHERE false"
        self.inbound = f"""
            WITH n AS (
                SELECT DISTINCT ON (message_id) * FROM {source("inbound")}
                    AS n(message_id, session_id, type, body, created_at)
                ORDER BY message_id, session_id, created_at, type, body
            ), before AS (
                SELECT m.session_id FROM n CROSS JOIN LATERAL (
                    SELECT m.session_id FROM {s}.messages m
                    WHERE m.message_id = n.message_id OFFSET 0) AS m
            ), written AS (
                INSERT INTO {s}.messages AS m
                    (message_id, session_id, direction, type, body, created_at, status)
                SELECT message_id, session_id, 'in', type, body, created_at, 'received' FROM n
                ON CONFLICT (message_id) DO UPDATE SET session_id = excluded.session_id,
                    type = excluded.type, body = excluded.body, created_at = excluded.created_at
                WHERE m.direction = 'in'
                    AND (excluded.session_id, excluded.created_at, excluded.type, excluded.body)
                        < (m.session_id, m.created_at, m.type, m.body)
            )
            {"SELECT session_id FROM before" if sources is None else returns_nothing}"""
        self.statuses = f"""
            INSERT INTO {s}.message_statuses AS t (message_id, status, at)
            SELECT message_id, status, min(at)
            FROM {source("statuses")} AS n(message_id, status, at)
            GROUP BY message_id, status
            ON CONFLICT (message_id, status) DO UPDATE SET at = excluded.at
            WHERE excluded.at < t.at"""
        # A message listed by two turns belongs to the first (turn ids are numbers as text).
        self.turn_messages = f"""
            INSERT INTO {s}.turn_messages AS t (message_id, session_id, turn_id)
            SELECT DISTINCT ON (message_id) message_id, session_id, turn_id
            FROM {source("turn_messages")} AS n(message_id, session_id, turn_id)
            ORDER BY message_id, length(turn_id), turn_id, session_id
            ON CONFLICT (message_id) DO UPDATE
                SET session_id = excluded.session_id, turn_id = excluded.turn_id
            WHERE (length(excluded.turn_id), excluded.turn_id, excluded.session_id)
                < (length(t.turn_id), t.turn_id, t.session_id)"""
        self.turns_ready = f"""
            INSERT INTO {s}.turns AS t (session_id, turn_id, message_count, ready_at)
            SELECT DISTINCT ON (session_id, turn_id) session_id, turn_id, message_count, ready_at
            FROM {source("turns_ready")} AS n(session_id, turn_id, message_count, ready_at)
            ORDER BY session_id, turn_id, ready_at, message_count
            ON CONFLICT (session_id, turn_id) DO UPDATE
                SET message_count = excluded.message_count, ready_at = excluded.ready_at
            WHERE t.ready_at IS NULL
                OR (excluded.ready_at, excluded.message_count) < (t.ready_at, t.message_count)"""
        first_generation = """(r.generated_at IS NULL
            OR (excluded.generated_at, excluded.body, excluded.tokens)
                < (r.generated_at, r.body, r.tokens))"""
        self.generated = f"""
            INSERT INTO {s}.replies AS r
                (reply_id, session_id, turn_id, body, tokens, generated_at, outcome)
            SELECT DISTINCT ON (reply_id)
                reply_id, session_id, turn_id, body, tokens, generated_at, 'generated'
            FROM {source("generated")}
                AS n(reply_id, session_id, turn_id, body, tokens, generated_at)
            ORDER BY reply_id, generated_at, body, tokens, session_id, turn_id
            ON CONFLICT (reply_id) DO UPDATE SET
                session_id = greatest(r.session_id, excluded.session_id),
                turn_id = greatest(r.turn_id, excluded.turn_id),
                body = CASE WHEN {first_generation} THEN excluded.body ELSE r.body END,
                tokens = CASE WHEN {first_generation} THEN excluded.tokens ELSE r.tokens END,
                generated_at = CASE WHEN {first_generation}
                    THEN excluded.generated_at ELSE r.generated_at END"""

        def order(t: str) -> str:
            return (
                f"({_RANK.format(f'{t}.outcome')}, coalesce({t}.outcome_at, '-infinity'), "
                f"coalesce({t}.code, -1), {t}.reason)"
            )

        further = f"({order('excluded')} > {order('r')})"
        self.outcomes = f"""
            INSERT INTO {s}.replies AS r
                (reply_id, session_id, turn_id, outcome, outcome_at, code, reason)
            SELECT DISTINCT ON (reply_id)
                reply_id, session_id, turn_id, outcome, outcome_at, code, reason
            FROM {source("outcomes")}
                AS n(reply_id, session_id, turn_id, outcome, outcome_at, code, reason)
            ORDER BY reply_id, {order("n")} DESC, session_id, turn_id
            ON CONFLICT (reply_id) DO UPDATE SET
                session_id = greatest(r.session_id, excluded.session_id),
                turn_id = greatest(r.turn_id, excluded.turn_id),
                outcome = CASE WHEN {further} THEN excluded.outcome ELSE r.outcome END,
                outcome_at = CASE WHEN {further} THEN excluded.outcome_at ELSE r.outcome_at END,
                code = CASE WHEN {further} THEN excluded.code ELSE r.code END,
                reason = CASE WHEN {further} THEN excluded.reason ELSE r.reason END"""
        # Body and status are derived afterwards (refresh_messages).
        self.outbound = f"""
            INSERT INTO {s}.messages AS m (message_id, session_id, direction, type, body,
                created_at, status, turn_id, reply_id)
            SELECT DISTINCT ON (message_id)
                message_id, session_id, 'out', 'text', '', created_at, 'sent', turn_id, reply_id
            FROM {source("outbound")} AS n(message_id, session_id, reply_id, turn_id, created_at)
            ORDER BY message_id, created_at, reply_id, session_id, turn_id
            ON CONFLICT (message_id) DO UPDATE SET session_id = excluded.session_id,
                created_at = excluded.created_at, turn_id = excluded.turn_id,
                reply_id = excluded.reply_id
            WHERE m.direction = 'out'
                AND (excluded.created_at, excluded.reply_id, excluded.session_id, excluded.turn_id)
                    < (m.created_at, m.reply_id, m.session_id, m.turn_id)"""
        self.handoffs = f"""
            INSERT INTO {s}.handoffs (session_id, entry_id, type, turn_id, at)
            SELECT * FROM {source("handoffs")} AS n(session_id, entry_id, type, turn_id, at)
            ON CONFLICT (session_id, entry_id) DO NOTHING"""
        self.errors = f"""
            INSERT INTO {s}.projection_errors (stream_key, entry_id, reason)
            SELECT DISTINCT ON (stream_key, entry_id) stream_key, entry_id, reason
            FROM unnest($1::text[], $2::text[], $3::text[]) AS n(stream_key, entry_id, reason)
            ORDER BY stream_key, entry_id, reason
            ON CONFLICT (stream_key, entry_id) DO NOTHING"""
        self.identities = f"""
            INSERT INTO {s}.sessions AS s (session_id, wa_id, customer, phone_number_id)
            SELECT * FROM {source("identities")}
                AS n(session_id, wa_id, customer, phone_number_id)
            ON CONFLICT (session_id) DO UPDATE SET
                wa_id = greatest(s.wa_id, excluded.wa_id),
                customer = greatest(s.customer, excluded.customer),
                phone_number_id = greatest(s.phone_number_id, excluded.phone_number_id)
            WHERE excluded.wa_id > s.wa_id OR excluded.customer > s.customer
                OR excluded.phone_number_id > s.phone_number_id"""
        # A turn's outcome is its furthest reply's; replied_at when that one was sent. Each
        # statement below reads and writes the batch's keys only, through indexes, so a batch
        # costs the same however large the tables are.
        self.refresh_turns = f"""
            INSERT INTO {s}.turns AS t (session_id, turn_id, outcome, replied_at)
            SELECT k.session_id, k.turn_id, f.outcome, f.replied_at
            FROM unnest($1::text[], $2::text[]) AS k(session_id, turn_id)
            CROSS JOIN LATERAL (
                SELECT r.outcome, CASE WHEN r.outcome = 'sent' THEN r.outcome_at END AS replied_at
                FROM {s}.replies r
                WHERE r.session_id = k.session_id AND r.turn_id = k.turn_id
                ORDER BY {order("r")} DESC, r.reply_id LIMIT 1
            ) AS f
            ORDER BY k.session_id, k.turn_id
            ON CONFLICT (session_id, turn_id) DO UPDATE
                SET outcome = excluded.outcome, replied_at = excluded.replied_at
            WHERE (t.outcome, t.replied_at) IS DISTINCT FROM (excluded.outcome, excluded.replied_at)
        """
        # Inbound: the turn that took it. Outbound: its reply's body, and its status from the
        # set of statuses it reached (failed is final; played counts as read).
        derived = f"""
                    CASE WHEN m.direction = 'in' THEN (SELECT tm.turn_id FROM {s}.turn_messages tm
                        WHERE tm.message_id = m.message_id) ELSE m.turn_id END AS turn_id,
                    CASE WHEN m.direction = 'in' THEN m.body ELSE coalesce((SELECT r.body
                        FROM {s}.replies r WHERE r.reply_id = m.reply_id), '') END AS body,
                    CASE WHEN m.direction = 'in' THEN m.status ELSE (SELECT CASE
                        WHEN bool_or(st.status = 'failed') THEN 'failed'
                        WHEN bool_or(st.status IN ('read', 'played')) THEN 'read'
                        WHEN bool_or(st.status = 'delivered') THEN 'delivered'
                        ELSE 'sent' END
                        FROM {s}.message_statuses st WHERE st.message_id = m.message_id)
                    END AS status"""
        # Each key is looked up on its own (a LATERAL subquery behind OFFSET 0 is not flattened)
        # and the rows are updated by ctid: index and TID scans whatever the planner estimates.
        self.refresh_messages = f"""
            WITH k AS MATERIALIZED (
                SELECT m.* FROM unnest($1::text[]) AS k(id) CROSS JOIN LATERAL (
                    SELECT m.ctid AS row, m.* FROM {s}.messages m
                    WHERE m.message_id = k.id OFFSET 0) AS m
                UNION
                SELECT m.* FROM unnest($2::text[]) AS k(id) CROSS JOIN LATERAL (
                    SELECT m.ctid AS row, m.* FROM {s}.messages m
                    WHERE m.reply_id = k.id OFFSET 0) AS m
            ), n AS MATERIALIZED (
                SELECT m.row, {derived} FROM k AS m
            )
            UPDATE {s}.messages m SET turn_id = n.turn_id, body = n.body, status = n.status
            FROM n WHERE m.ctid = ANY(ARRAY(SELECT row FROM n)) AND m.ctid = n.row
                AND (m.turn_id, m.body, m.status) IS DISTINCT FROM (n.turn_id, n.body, n.status)
        """
        sessions = f"""
                    (SELECT min(created_at) FROM {s}.messages m
                        WHERE m.session_id = s.session_id AND m.direction = 'in') AS started_at,
                    (SELECT max(created_at) FROM {s}.messages m
                        WHERE m.session_id = s.session_id AND m.direction = 'in')
                        AS last_message_at,
                    (SELECT count(*) FROM {s}.turns t
                        WHERE t.session_id = s.session_id AND t.ready_at IS NOT NULL)::int
                        AS turn_count"""
        self.refresh_sessions = f"""
            WITH n AS MATERIALIZED (
                SELECT s.row, {sessions}
                FROM unnest($1::text[]) AS k(id) CROSS JOIN LATERAL (
                    SELECT s.ctid AS row, s.session_id FROM {s}.sessions s
                    WHERE s.session_id = k.id OFFSET 0) AS s
            )
            UPDATE {s}.sessions s SET started_at = n.started_at,
                last_message_at = n.last_message_at, turn_count = n.turn_count
            FROM n WHERE s.ctid = ANY(ARRAY(SELECT row FROM n)) AND s.ctid = n.row
                AND (s.started_at, s.last_message_at, s.turn_count)
                    IS DISTINCT FROM (n.started_at, n.last_message_at, n.turn_count)
        """
        # closed: a later session of the same conversation exists; handoff: the session's
        # latest handoff entry is a request. Done for every session of the conversations
        # touched, as a new session closes the one before.
        status = f"""CASE
                    WHEN m.latest <> m.session_id THEN 'closed'
                    WHEN (SELECT h.type FROM {s}.handoffs h WHERE h.session_id = m.session_id
                        ORDER BY h.at DESC, split_part(h.entry_id, '-', 2)::bigint DESC LIMIT 1)
                        = 'requested' THEN 'handoff'
                    ELSE 'active' END"""
        self.refresh_statuses = f"""
            WITH t AS MATERIALIZED (
                SELECT s.* FROM unnest($1::text[]) AS k(id) CROSS JOIN LATERAL (
                    SELECT s.ctid AS row, s.session_id, s.phone_number_id, s.customer
                    FROM {s}.sessions s WHERE s.session_id = k.id OFFSET 0) AS s
            ), c AS (
                SELECT DISTINCT phone_number_id, customer FROM t WHERE customer <> ''
            ), members AS (
                SELECT s.row, s.session_id, first_value(s.session_id) OVER (
                    PARTITION BY s.phone_number_id, s.customer
                    ORDER BY s.started_at DESC NULLS LAST, s.session_id DESC) AS latest
                FROM c CROSS JOIN LATERAL (
                    SELECT s.ctid AS row, s.* FROM {s}.sessions s
                    WHERE s.phone_number_id = c.phone_number_id AND s.customer = c.customer
                    OFFSET 0
                ) AS s
                UNION ALL
                SELECT row, session_id, NULL FROM t WHERE customer = ''
            ), n AS MATERIALIZED (
                SELECT m.row, {status} AS status
                FROM members m
            )
            UPDATE {s}.sessions s SET status = n.status
            FROM n WHERE s.ctid = ANY(ARRAY(SELECT row FROM n)) AND s.ctid = n.row
                AND s.status <> n.status
        """
        # The same derivations over the whole schema, set-based (a bulk copy's promote()):
        # what the refresh statements above leave after every key has been refreshed.
        self.derive_turns = f"""
            INSERT INTO {s}.turns AS t (session_id, turn_id, outcome, replied_at)
            SELECT DISTINCT ON (r.session_id, r.turn_id) r.session_id, r.turn_id, r.outcome,
                CASE WHEN r.outcome = 'sent' THEN r.outcome_at END
            FROM {s}.replies r
            ORDER BY r.session_id, r.turn_id, {order("r")} DESC, r.reply_id
            ON CONFLICT (session_id, turn_id) DO UPDATE
                SET outcome = excluded.outcome, replied_at = excluded.replied_at
            WHERE (t.outcome, t.replied_at) IS DISTINCT FROM (excluded.outcome, excluded.replied_at)
        """
        self.derive_messages = f"""
            WITH st AS (
                SELECT message_id, CASE
                    WHEN bool_or(status = 'failed') THEN 'failed'
                    WHEN bool_or(status IN ('read', 'played')) THEN 'read'
                    WHEN bool_or(status = 'delivered') THEN 'delivered'
                    ELSE 'sent' END AS status
                FROM {s}.message_statuses GROUP BY message_id
            ), n AS MATERIALIZED (
                SELECT m.ctid AS row,
                    CASE WHEN m.direction = 'in' THEN tm.turn_id ELSE m.turn_id END AS turn_id,
                    CASE WHEN m.direction = 'in' THEN m.body ELSE coalesce(r.body, '') END AS body,
                    CASE WHEN m.direction = 'in' THEN m.status ELSE coalesce(st.status, 'sent')
                    END AS status
                FROM {s}.messages m
                LEFT JOIN {s}.turn_messages tm ON tm.message_id = m.message_id
                LEFT JOIN {s}.replies r ON r.reply_id = m.reply_id
                LEFT JOIN st ON st.message_id = m.message_id
            )
            UPDATE {s}.messages m SET turn_id = n.turn_id, body = n.body, status = n.status
            FROM n WHERE m.ctid = n.row
                AND (m.turn_id, m.body, m.status) IS DISTINCT FROM (n.turn_id, n.body, n.status)
        """
        self.derive_sessions = f"""
            WITH i AS (
                SELECT session_id, min(created_at) AS started_at, max(created_at) AS last_at
                FROM {s}.messages WHERE direction = 'in' GROUP BY session_id
            ), t AS (
                SELECT session_id, count(*)::int AS turn_count
                FROM {s}.turns WHERE ready_at IS NOT NULL GROUP BY session_id
            ), n AS MATERIALIZED (
                SELECT s.ctid AS row, i.started_at, i.last_at AS last_message_at,
                    coalesce(t.turn_count, 0) AS turn_count
                FROM {s}.sessions s
                LEFT JOIN i ON i.session_id = s.session_id
                LEFT JOIN t ON t.session_id = s.session_id
            )
            UPDATE {s}.sessions s SET started_at = n.started_at,
                last_message_at = n.last_message_at, turn_count = n.turn_count
            FROM n WHERE s.ctid = n.row
                AND (s.started_at, s.last_message_at, s.turn_count)
                    IS DISTINCT FROM (n.started_at, n.last_message_at, n.turn_count)
        """
        self.derive_statuses = f"""
            WITH h AS (
                SELECT DISTINCT ON (session_id) session_id, type FROM {s}.handoffs
                ORDER BY session_id, at DESC, split_part(entry_id, '-', 2)::bigint DESC
            ), m AS (
                SELECT s.ctid AS row, s.session_id, s.status, CASE WHEN s.customer <> ''
                    THEN first_value(s.session_id) OVER (
                        PARTITION BY s.phone_number_id, s.customer
                        ORDER BY s.started_at DESC NULLS LAST, s.session_id DESC)
                    END AS latest
                FROM {s}.sessions s
            ), n AS MATERIALIZED (
                SELECT m.row, m.status AS was, CASE
                    WHEN m.latest <> m.session_id THEN 'closed'
                    WHEN h.type = 'requested' THEN 'handoff'
                    ELSE 'active' END AS status
                FROM m LEFT JOIN h ON h.session_id = m.session_id
            )
            UPDATE {s}.sessions s SET status = n.status
            FROM n WHERE s.ctid = n.row AND n.was <> n.status
        """
