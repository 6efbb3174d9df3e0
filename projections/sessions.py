"""The sessions read model in PostgreSQL: sessions, messages, turns, replies and handoffs.

Rows are a function of the set of events applied, never of the order they were read in: a
replay reads the streams in another interleaving than live following did, and must build the
same rows. So every table merges a repeated key by a fixed rule (the least or the furthest
value), and what depends on several events (a message's status, a session's status, its
first and last message) is derived, on every write, from the facts kept in the tables (a
replay's bulk copy derives it once, over the whole schema, before its promotion).
Times come from the log only: WhatsApp's timestamps and the entries' own ids.

One batch is one transaction: the checkpoint rows are locked and compared with the batch's
start, every table is written with one statement over arrays (no round trip per row), and
the checkpoint moves to the batch's end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs in the dev extra yet
import msgspec
import structlog

from projections.follower import Failure, Item, Moved
from zapstream.events import (
    HandoffReleased,
    HandoffRequested,
    MessageReceived,
    ReplyBlocked,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    ReplySuperseded,
    StatusUpdated,
    TurnReady,
)

log = structlog.get_logger()

LIVE_SCHEMA = "zapstream"
MIGRATIONS = Path(__file__).parent / "migrations" / "sessions"
POOL_SIZE = 4
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0  # one statement
APPLY_TIMEOUT_S = 60.0  # one batch's transaction, waiting for a connection included
MIGRATE_TIMEOUT_S = 120.0
DERIVE_TIMEOUT_S = 1800.0  # a bulk copy's derived columns, over the whole schema (promote)
DERIVE_WORK_MEM = "256MB"
LOCK_TIMEOUT = "10s"  # a row or table lock held elsewhere longer than this: a transient error
START = "0-0"
# ANALYZE the tables (autovacuum may be off) once this many entries are applied, then each
# time the count doubles: plans keep up with the tables' growth at a logarithmic cost.
ANALYZE_FIRST = 5_000
TABLES = {  # the projected tables (checkpoint aside), each with its key
    "sessions": "session_id",
    "messages": "message_id",
    "message_statuses": "message_id, status",
    "turn_messages": "message_id",
    "turns": "session_id, turn_id",
    "replies": "reply_id",
    "handoffs": "session_id, entry_id",
    "projection_errors": "stream_key, entry_id",
}
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,50}")
_MIGRATION_NAME = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


class SessionsTarget:
    """The `sessions` model in `schema` of the database at `database_url`.

    A replay builds a copy in another schema and calls promote(); `live_schema` names the
    schema it replaces. `bulk` (a replay's copy only): batches write the facts alone, and the
    derived columns (a message's status, a session's status, ...) are computed once, over the
    whole schema, by promote(); nobody reads the copy before that.
    """

    name: ClassVar[str] = "sessions"
    streams: ClassVar[tuple[str, ...]] = ("messages", "statuses", "turns", "replies", "handoffs")

    def __init__(
        self,
        database_url: str,
        *,
        schema: str = LIVE_SCHEMA,
        live_schema: str = LIVE_SCHEMA,
        bulk: bool = False,
    ) -> None:
        for value in (schema, live_schema):
            if not _SCHEMA_NAME.fullmatch(value):
                raise ValueError(f"schema name {value!r}: lowercase letters, digits, _")
        if bulk and schema == live_schema:
            raise ValueError("bulk is for a replay's copy: the live schema is read meanwhile")
        self.bulk = bulk
        self.database_url = database_url
        self.schema = schema
        self.live_schema = live_schema
        self._pool: asyncpg.Pool | None = None
        self._sql = _Statements(f'"{schema}"')
        self._applied = 0  # entries applied by this instance
        self._analyze_at = ANALYZE_FIRST

    async def start(self) -> None:
        """Create the database and the schema when missing and apply pending migrations;
        safe when several processes start at once."""
        await _create_database(self.database_url)
        migrations = await asyncio.to_thread(_read_migrations)
        async with asyncio.timeout(MIGRATE_TIMEOUT_S):
            connection = await _connect(self.database_url)
            try:
                await _migrate(connection, self.schema, migrations)
            finally:
                await connection.close()
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.database_url,
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                    server_settings=_SERVER_SETTINGS,
                )

    async def positions(self) -> dict[str, str]:
        async with asyncio.timeout(APPLY_TIMEOUT_S):
            rows = await self._connections().fetch(self._sql.positions)
        return {row["stream_key"]: row["position"] for row in rows}

    async def apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure] = (),
    ) -> None:
        rows = _Rows()
        for item in items:
            rows.add(item)
        rows.errors.extend((f.key, f.entry_id, f.reason) for f in failures)
        keys = sorted(start.keys() | end.keys())
        target = {key: end.get(key, start.get(key, START)) for key in keys}
        for key in keys:
            if _entry_order(target[key]) < _entry_order(start.get(key, START)):
                raise ValueError(f"the checkpoint of {key} would move backwards")
        async with asyncio.timeout(APPLY_TIMEOUT_S):
            async with self._connections().acquire() as connection, connection.transaction():
                stored = await self._lock_checkpoint(connection, keys)
                for key in keys:
                    if stored.get(key, START) != start.get(key, START):
                        raise Moved(
                            f"{key}: checkpoint at {stored.get(key, START)}, "
                            f"batch starts at {start.get(key, START)}"
                        )
                await self._write(connection, rows)
                moved = [k for k in keys if target[k] != stored.get(k, START)]
                if moved:
                    await connection.execute(
                        self._sql.move_checkpoint, moved, [target[k] for k in moved]
                    )
        self._applied += len(items) + len(failures)
        if self._applied >= self._analyze_at:
            self._analyze_at = self._applied * 2
            await self._analyze()

    async def _analyze(self) -> None:
        """Refresh the planner's statistics. The batch is committed already: a failure here
        is logged, never raised (the follower would retry a batch that is in)."""
        try:
            async with asyncio.timeout(MIGRATE_TIMEOUT_S):
                async with self._connections().acquire() as connection:
                    for table in TABLES:
                        await connection.execute(f'ANALYZE "{self.schema}".{table}')
        except Exception as error:  # statistics only: the next doubling tries again
            log.warning("projection_analyze_failed", projection=self.name, error=repr(error))

    def transient(self, error: BaseException) -> bool:
        # A connection lost inside a transaction surfaces as the InterfaceError of its
        # rollback ("the underlying connection is closed"), raised while handling the loss.
        seen: BaseException | None = error
        while seen is not None:
            if isinstance(seen, _TRANSIENT):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await pool.close()
        except TimeoutError:
            pool.terminate()

    async def promote(self) -> None:
        """Make this (shadow) schema the live one, in one transaction: readers see the old
        model or the new one, never half. The live follower then finds its checkpoint moved.
        This target's schema no longer exists afterwards: close it."""
        if self.schema == self.live_schema:
            raise ValueError("promote() is for a replay's copy, not the live schema")
        live, old = f'"{self.live_schema}"', f'"{self.live_schema}_old"'
        if self.bulk:
            await self._derive_all()
        async with asyncio.timeout(MIGRATE_TIMEOUT_S):
            connection = await _connect(self.database_url)
            try:
                async with connection.transaction():
                    # Waits for the live follower's transaction in flight, then holds it off;
                    # gives up (LockNotAvailableError) before the statement's own timeout.
                    await connection.execute("SET LOCAL lock_timeout = '25s'")
                    await _lock_migrations(connection, self.live_schema)
                    await connection.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
                    if await _schema_exists(connection, self.live_schema):
                        await connection.execute(f"ALTER SCHEMA {live} RENAME TO {old}")
                    await connection.execute(f'ALTER SCHEMA "{self.schema}" RENAME TO {live}')
                    # Dropping the old tables also invalidates every plan prepared on them:
                    # cached statements of live connections resolve their names again.
                    await connection.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
            finally:
                await connection.close()
        log.info("projection_promoted", projection=self.name, schema=self.live_schema)

    async def _derive_all(self) -> None:
        """A bulk copy's derived columns, each table in one set-based statement, in the order
        they depend on each other; then fresh statistics for the live follower's plans."""
        sql = self._sql
        async with asyncio.timeout(DERIVE_TIMEOUT_S):
            connection = await _connect(self.database_url)
            try:
                async with connection.transaction():
                    # whole-table hash joins: in memory rather than in batches on disk
                    await connection.execute(f"SET LOCAL work_mem = '{DERIVE_WORK_MEM}'")
                    for statement in (
                        sql.derive_turns,
                        sql.derive_messages,
                        sql.derive_sessions,
                        sql.derive_statuses,
                    ):
                        await connection.execute(statement, timeout=DERIVE_TIMEOUT_S)
                for table in TABLES:
                    await connection.execute(
                        f'ANALYZE "{self.schema}".{table}', timeout=DERIVE_TIMEOUT_S
                    )
            finally:
                await connection.close()

    async def drop(self) -> None:
        """Discard this (shadow) schema; nothing happens when it or its database is missing."""
        if self.schema == self.live_schema:
            raise ValueError("drop() is for a replay's copy, not the live schema")
        async with asyncio.timeout(MIGRATE_TIMEOUT_S):
            try:
                connection = await _connect(self.database_url)
            except asyncpg.InvalidCatalogNameError:
                return
            try:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await connection.close()

    async def read_all(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every projected table's rows (the checkpoint aside), sorted by key."""
        found: dict[str, list[tuple[Any, ...]]] = {}
        async with asyncio.timeout(APPLY_TIMEOUT_S):
            async with (
                self._connections().acquire() as connection,
                connection.transaction(isolation="repeatable_read", readonly=True),
            ):
                for table, key in TABLES.items():
                    rows = await connection.fetch(
                        f'SELECT * FROM "{self.schema}".{table} ORDER BY {key}'
                    )
                    found[table] = [tuple(row) for row in rows]
        return found

    def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("SessionsTarget.start() has not run")
        return self._pool

    async def _lock_checkpoint(
        self, connection: asyncpg.Connection, keys: list[str]
    ) -> dict[str, str]:
        rows = await connection.fetch(self._sql.lock_checkpoint, keys)
        if len(rows) < len(keys):
            # A missing row cannot be locked: insert it (a concurrent inserter waits for us,
            # or we for it), then lock them all.
            await connection.execute(self._sql.insert_checkpoint, keys)
            rows = await connection.fetch(self._sql.lock_checkpoint, keys)
        return {row["stream_key"]: row["position"] for row in rows}

    async def _write(self, connection: asyncpg.Connection, rows: _Rows) -> None:
        sql = self._sql
        sessions = set(rows.sessions)
        if rows.inbound:
            # The sessions a repeated wamid leaves are touched too.
            moved = await connection.fetch(sql.inbound, *_columns(rows.inbound, 5))
            sessions.update(row["session_id"] for row in moved)
        await _execute(connection, sql.statuses, rows.statuses, 3)
        await _execute(connection, sql.turn_messages, rows.turn_messages, 3)
        await _execute(connection, sql.turns_ready, rows.turns_ready, 4)
        await _execute(connection, sql.generated, rows.generated, 6)
        await _execute(connection, sql.outcomes, rows.outcomes, 7)
        await _execute(connection, sql.outbound, rows.outbound, 5)
        await _execute(connection, sql.handoffs, rows.handoffs, 5)
        await _execute(connection, sql.errors, rows.errors, 3)
        sessions.discard("")
        if self.bulk:  # derived in promote()
            identities = [(sid, *known) for sid, known in rows.identities.items()]
            await _execute(connection, sql.identities, identities, 4)
            return
        if rows.turn_keys:
            await connection.execute(sql.refresh_turns, *_columns(sorted(rows.turn_keys), 2))
        if rows.refresh_messages or rows.refresh_replies:
            await connection.execute(
                sql.refresh_messages, sorted(rows.refresh_messages), sorted(rows.refresh_replies)
            )
        if sessions:
            identities = [(sid, *known) for sid, known in rows.identities.items()]
            await _execute(connection, sql.identities, identities, 4)
            touched = sorted(sessions)
            await connection.execute(sql.refresh_sessions, touched)
            await connection.execute(sql.refresh_statuses, touched)


_SERVER_SETTINGS = {
    "application_name": "zapstream-sessions",
    "lock_timeout": LOCK_TIMEOUT,
    "jit": "off",  # short set-based statements: compiling them costs more than it saves
}


class _Rows:
    """A batch's rows, grouped by the statement that writes them."""

    def __init__(self) -> None:
        self.inbound: list[tuple[Any, ...]] = []
        self.statuses: list[tuple[Any, ...]] = []
        self.turn_messages: list[tuple[Any, ...]] = []
        self.turns_ready: list[tuple[Any, ...]] = []
        self.generated: list[tuple[Any, ...]] = []
        self.outcomes: list[tuple[Any, ...]] = []
        self.outbound: list[tuple[Any, ...]] = []
        self.handoffs: list[tuple[Any, ...]] = []
        self.errors: list[tuple[Any, ...]] = []
        # session id -> (wa_id, customer, phone_number_id), the greatest of each seen
        self.identities: dict[str, tuple[str, str, str]] = {}
        self.sessions: set[str] = set()
        self.turn_keys: set[tuple[str, str]] = set()
        self.refresh_messages: set[str] = set()
        self.refresh_replies: set[str] = set()

    def add(self, item: Item) -> None:
        event = item.event
        match event:
            case None:
                self.errors.append((item.key, item.entry_id, item.error))
            case MessageReceived():
                created = _from_seconds(event.timestamp)
                body = _body(event.kind, event.data)
                row = (event.message_id, event.session_id, event.kind, body, created)
                self.inbound.append(row)
                self.refresh_messages.add(event.message_id)
                self._session(event.session_id, event.from_, event.customer, event.phone_number_id)
            case StatusUpdated():
                at = _from_seconds(event.timestamp)
                self.statuses.append((event.message_id, event.status, at))
                self.refresh_messages.add(event.message_id)
            case TurnReady():
                ready = _from_ms(item.at_ms)
                count = len(event.message_ids)
                self.turns_ready.append((event.session_id, event.turn_id, count, ready))
                for wamid in event.message_ids:
                    self.turn_messages.append((wamid, event.session_id, event.turn_id))
                    self.refresh_messages.add(wamid)
                self._session(event.session_id, "", event.customer, event.phone_number_id)
            case ReplyGenerated():
                at = _from_ms(item.at_ms)
                self.generated.append(
                    (event.reply_id, event.session_id, event.turn_id, event.body, event.tokens, at)
                )
                self.refresh_replies.add(event.reply_id)
                self._turn(event.session_id, event.turn_id)
                self._session(event.session_id, "", event.customer, event.phone_number_id)
            case ReplySent():
                at = _from_ms(item.at_ms)
                self._outcome(event.reply_id, event.session_id, event.turn_id, "sent", at)
                for wamid in dict.fromkeys(event.wamids or [event.message_id]):
                    if wamid:
                        row = (wamid, event.session_id, event.reply_id, event.turn_id, at)
                        self.outbound.append(row)
                        self.refresh_messages.add(wamid)
            case ReplyFailed():
                at = _from_ms(item.at_ms)
                self._outcome(
                    event.reply_id,
                    event.session_id,
                    event.turn_id,
                    "failed",
                    at,
                    event.code,
                    event.reason,
                )
            case ReplyBlocked():
                at = _from_ms(item.at_ms)
                self._outcome(
                    event.reply_id,
                    event.session_id,
                    event.turn_id,
                    "blocked",
                    at,
                    None,
                    event.reason,
                )
            case ReplySuperseded():
                at = _from_ms(item.at_ms)
                self._outcome(event.reply_id, event.session_id, event.turn_id, "superseded", at)
            case HandoffRequested() | HandoffReleased():
                kind = "requested" if isinstance(event, HandoffRequested) else "released"
                at = _from_ms(item.at_ms)
                self.handoffs.append((event.session_id, item.entry_id, kind, event.turn_id, at))
                self._session(event.session_id, "", event.customer, event.phone_number_id)
            case _:
                pass  # message.rejected and types this model does not read: checkpoint only

    def _outcome(
        self,
        reply_id: str,
        session_id: str,
        turn_id: str,
        outcome: str,
        at: datetime,
        code: int | None = None,
        reason: str = "",
    ) -> None:
        self.outcomes.append((reply_id, session_id, turn_id, outcome, at, code, reason))
        self._turn(session_id, turn_id)
        self._session(session_id, "", "", "")

    def _turn(self, session_id: str, turn_id: str) -> None:
        self.turn_keys.add((session_id, turn_id))

    def _session(self, session_id: str, wa_id: str, customer: str, phone_number_id: str) -> None:
        if not session_id:
            return
        self.sessions.add(session_id)
        known = self.identities.get(session_id, ("", "", ""))
        self.identities[session_id] = (
            max(known[0], wa_id),
            max(known[1], customer),
            max(known[2], phone_number_id),
        )


class _Part(msgspec.Struct, frozen=True):
    body: str = ""  # a text's
    caption: str = ""  # a media message's


class _MessageView(msgspec.Struct, frozen=True):
    """The parts of Meta's message object a body is read from; the rest is ignored."""

    text: _Part | None = None
    image: _Part | None = None
    video: _Part | None = None
    document: _Part | None = None


_message_view = msgspec.json.Decoder(_MessageView)


def _body(kind: str, data: str) -> str:
    """A text's body or a media message's caption; '' for anything else or unreadable."""
    try:
        view = _message_view.decode(data)
    except msgspec.DecodeError:
        return ""
    match kind:
        case "text":
            return view.text.body if view.text else ""
        case "image" | "video" | "document":
            part: _Part | None = getattr(view, kind)
            return part.caption if part else ""
        case _:
            return ""


def _from_seconds(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as columns: one array parameter per column, for unnest()."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


async def _execute(
    connection: asyncpg.Connection, sql: str, rows: list[tuple[Any, ...]], width: int
) -> None:
    if rows:
        await connection.execute(sql, *_columns(rows, width))


# Outcomes of a reply, from the nearest to the furthest: a turn shows its furthest, and a
# sent reply stays sent whatever arrives after.
_RANK = "array_position(ARRAY['generated','superseded','blocked','failed','sent']::text[], {})"


class _Statements:
    """The SQL of one schema. Each statement writes a whole batch's rows of one kind."""

    def __init__(self, s: str) -> None:
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
        # A wamid read twice keeps its least row; returns the sessions it was in before.
        self.inbound = f"""
            WITH n AS (
                SELECT DISTINCT ON (message_id) * FROM unnest(
                    $1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]
                ) AS n(message_id, session_id, type, body, created_at)
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
            SELECT session_id FROM before"""
        self.statuses = f"""
            INSERT INTO {s}.message_statuses AS t (message_id, status, at)
            SELECT message_id, status, min(at)
            FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS n(message_id, status, at)
            GROUP BY message_id, status
            ON CONFLICT (message_id, status) DO UPDATE SET at = excluded.at
            WHERE excluded.at < t.at"""
        # A message listed by two turns belongs to the first (turn ids are numbers as text).
        self.turn_messages = f"""
            INSERT INTO {s}.turn_messages AS t (message_id, session_id, turn_id)
            SELECT DISTINCT ON (message_id) message_id, session_id, turn_id
            FROM unnest($1::text[], $2::text[], $3::text[]) AS n(message_id, session_id, turn_id)
            ORDER BY message_id, length(turn_id), turn_id, session_id
            ON CONFLICT (message_id) DO UPDATE
                SET session_id = excluded.session_id, turn_id = excluded.turn_id
            WHERE (length(excluded.turn_id), excluded.turn_id, excluded.session_id)
                < (length(t.turn_id), t.turn_id, t.session_id)"""
        self.turns_ready = f"""
            INSERT INTO {s}.turns AS t (session_id, turn_id, message_count, ready_at)
            SELECT DISTINCT ON (session_id, turn_id) session_id, turn_id, message_count, ready_at
            FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[])
                AS n(session_id, turn_id, message_count, ready_at)
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
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                $6::timestamptz[]) AS n(reply_id, session_id, turn_id, body, tokens, generated_at)
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
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                $6::int[], $7::text[])
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
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                AS n(message_id, session_id, reply_id, turn_id, created_at)
            ORDER BY message_id, created_at, reply_id, session_id, turn_id
            ON CONFLICT (message_id) DO UPDATE SET session_id = excluded.session_id,
                created_at = excluded.created_at, turn_id = excluded.turn_id,
                reply_id = excluded.reply_id
            WHERE m.direction = 'out'
                AND (excluded.created_at, excluded.reply_id, excluded.session_id, excluded.turn_id)
                    < (m.created_at, m.reply_id, m.session_id, m.turn_id)"""
        self.handoffs = f"""
            INSERT INTO {s}.handoffs (session_id, entry_id, type, turn_id, at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                $5::timestamptz[])
            ON CONFLICT (session_id, entry_id) DO NOTHING"""
        self.errors = f"""
            INSERT INTO {s}.projection_errors (stream_key, entry_id, reason)
            SELECT DISTINCT ON (stream_key, entry_id) stream_key, entry_id, reason
            FROM unnest($1::text[], $2::text[], $3::text[]) AS n(stream_key, entry_id, reason)
            ORDER BY stream_key, entry_id, reason
            ON CONFLICT (stream_key, entry_id) DO NOTHING"""
        self.identities = f"""
            INSERT INTO {s}.sessions AS s (session_id, wa_id, customer, phone_number_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
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


async def _connect(url: str, database: str | None = None) -> asyncpg.Connection:
    async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
        connection: asyncpg.Connection = await asyncpg.connect(
            url,
            database=database,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
            server_settings=_SERVER_SETTINGS,
        )
    return connection


def _database_name(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = unquote(parts.path.lstrip("/"))
    return name or (query.get("dbname") or query.get("database") or [""])[0]


async def _create_database(url: str) -> None:
    """Create the URL's database when it is missing (another process may be doing the same)."""
    try:
        connection = await _connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return
    name = _database_name(url)
    admin = await _connect(url, database="postgres")
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
        log.info("database_created", database=name)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # created meanwhile by another process
    finally:
        await admin.close()


class _Migration(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    name: str
    sql: str


def _read_migrations() -> list[_Migration]:
    found = []
    for path in MIGRATIONS.iterdir():
        matched = _MIGRATION_NAME.fullmatch(path.name)
        if matched:
            version = int(matched[1])
            sql = path.read_text(encoding="utf-8")
            found.append(_Migration(version=version, name=matched[2], sql=sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{MIGRATIONS}: two migrations share a number")
    return found


async def _lock_migrations(connection: asyncpg.Connection, schema: str) -> None:
    """The transaction's lock on `schema`'s structure: migrations and promotion take turns."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"zapstream:schema:{schema}"
    )


async def _schema_exists(connection: asyncpg.Connection, schema: str) -> bool:
    found = await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    return found is not None


async def _migrate(
    connection: asyncpg.Connection, schema: str, migrations: list[_Migration]
) -> None:
    """Apply the migrations `schema` lacks, in order, in one transaction under a lock."""
    quoted = f'"{schema}"'
    async with connection.transaction():
        await _lock_migrations(connection, schema)
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL)"
        )
        rows = await connection.fetch(f"SELECT version FROM {quoted}.schema_migrations")
        applied = {row["version"] for row in rows}
        await connection.execute(f"SET LOCAL search_path TO {quoted}")
        for migration in migrations:
            if migration.version in applied:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            log.info("migration_applied", schema=schema, version=migration.version)
