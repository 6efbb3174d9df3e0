"""The sessions read model in PostgreSQL: sessions, messages, turns, replies and handoffs.

Rows are a function of the set of events applied, never of the order they were read in: a
replay reads the streams in another interleaving than live following did, and must build the
same rows. So every table merges a repeated key by a fixed rule (the least or the furthest
value), and what depends on several events (a message's status, a session's status, its
first and last message) is derived, on every write, from the facts kept in the tables (a
replay's bulk copy derives it once, over the whole schema, before its promotion).
Times come from the log only: WhatsApp's timestamps and the entries' own ids.
The events become rows in sessions_rows.py, the rows' SQL is in sessions_sql.py, and the
database and schema are created and migrated by migrate.py.

One batch is one transaction: the checkpoint rows are locked and compared with the batch's
start, every table is written with one statement over arrays (no round trip per row), and
the checkpoint moves to the batch's end. A replay's bulk copy takes XRANGE's replies as they
are instead: COPYed into a staging table and projected from there by the same statements,
in the same transaction (apply_raw, sessions_bulk.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg  # type: ignore[import-untyped]  # no stubs in the dev extra yet
import structlog

from projections.follower import LOG_STREAMS, Failure, Item, Moved, RawChunk, decode, explain
from projections.migrate import (
    Connecting,
    connect,
    create_database,
    lock_migrations,
    migrate,
    read_migrations,
    schema_exists,
)
from projections.sessions_bulk import (
    COLUMNS,
    READS,
    REJECTED,
    STAGED_ENTRIES,
    create_staged,
    drop_staged,
    sources,
    split_line,
    stage_identities,
    staged_records,
)
from projections.sessions_rows import Rows, to_columns
from projections.sessions_sql import ARRAY_TYPES, Statements
from projections.since import Forgotten

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
RAW_BATCH = 20_000  # a bulk copy's entries per XRANGE and transaction
# Stream keys a bulk copy loads at once: PostgreSQL's work, the most of a rebuild's, on two
# backends (chunks of different keys write different rows).
RAW_LANES = 2
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
    whole schema, by promote(); nobody reads the copy before that. It also loads XRANGE
    replies as they are (apply_raw), two stream keys at once (RAW_LANES).
    """

    name: ClassVar[str] = "sessions"
    # `operations` too, though no row comes from it.
    streams: ClassVar[tuple[str, ...]] = LOG_STREAMS

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
        if bulk:
            self.raw_batch = RAW_BATCH  # Follower stages XRANGE replies as they are
            self.raw_lanes = RAW_LANES
        self.database_url = database_url
        self.schema = schema
        self.live_schema = live_schema
        self._pool: asyncpg.Pool | None = None
        self._sql = Statements(f'"{schema}"')
        staged = Statements(f'"{schema}"', sources=sources(f'"{schema}"'))
        # Identities are staged chunk by chunk, and written once by _derive_all.
        self._staged_sql = {
            name: getattr(staged, name) for name in ARRAY_TYPES if name != "identities"
        }
        self._staged_sql["staged_identities"] = stage_identities(f'"{schema}"')
        self._identities = staged.identities
        self._applied = 0  # entries applied by this instance
        self._analyze_at = ANALYZE_FIRST
        self._deferred_indexes: list[str] = []  # a bulk copy's, built by promote()

    async def start(self) -> None:
        """Create the database and the schema when missing and apply pending migrations;
        safe when several processes start at once."""
        await create_database(self.database_url, _CONNECTING)
        migrations = await asyncio.to_thread(read_migrations, MIGRATIONS)
        async with asyncio.timeout(MIGRATE_TIMEOUT_S):
            connection = await _connect(self.database_url)
            try:
                await migrate(connection, self.schema, migrations)
            finally:
                await connection.close()
            if self.bulk:
                await self._create_staged()
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.database_url,
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                    server_settings=_SERVER_SETTINGS,
                    init=_create_staged_entries if self.bulk else None,
                )

    async def _create_staged(self) -> None:
        s = f'"{self.schema}"'
        connection = await _connect(self.database_url)
        try:
            async with connection.transaction():
                await connection.execute(drop_staged(s))
                await connection.execute(create_staged(s))
                # Room in every page for derive_messages' new row versions: HOT updates, no
                # index entries (it changes no indexed column). Reset before promotion.
                await connection.execute(f"ALTER TABLE {s}.messages SET (fillfactor = 50)")
                # Indexes no write of the copy needs (ON CONFLICT needs the unique ones) are
                # built once, before promotion, rather than entry by entry.
                for name, definition in await connection.fetch(_SECONDARY_INDEXES, self.schema):
                    self._deferred_indexes.append(definition)
                    await connection.execute(f"DROP INDEX {name}")
        finally:
            await connection.close()

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
        rows = Rows()
        for item in items:
            rows.add(item)
        rows.errors.extend((f.key, f.entry_id, f.reason) for f in failures)
        await self._transaction(start, end, lambda connection: self._write(connection, rows))
        self._applied += len(items) + len(failures)
        if self._applied >= self._analyze_at:
            self._analyze_at = self._applied * 2
            await self._analyze()

    async def apply_raw(self, chunk: RawChunk, start: dict[str, str], end: dict[str, str]) -> None:
        """apply() for a replay's bulk copy: the chunk COPYed into the staging table and
        projected from there set-based (sessions_bulk.py), in the checkpoint's transaction."""
        records = staged_records(chunk)  # ValueError: the follower applies Items
        types = {record[3] for record in records}

        async def stage(connection: asyncpg.Connection) -> None:
            # A crash loses the copy whatever was committed (a replay starts it afresh).
            await connection.execute("SET LOCAL synchronous_commit = off")
            await connection.copy_records_to_table(
                "staged_entries", columns=COLUMNS, records=records
            )
            await self._project_staged(connection, types)

        await self._transaction(start, end, stage)

    async def _transaction(
        self,
        start: dict[str, str],
        end: dict[str, str],
        write: Callable[[asyncpg.Connection], Awaitable[None]],
    ) -> None:
        """In one transaction: lock the checkpoint and check it is at `start` (else Moved),
        write, and move the checkpoint to `end`."""
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
                await write(connection)
                moved = [k for k in keys if target[k] != stored.get(k, START)]
                if moved:
                    await connection.execute(
                        self._sql.move_checkpoint, moved, [target[k] for k in moved]
                    )

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
                    await lock_migrations(connection, self.live_schema)
                    await connection.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
                    if await schema_exists(connection, self.live_schema):
                        await connection.execute(f"ALTER SCHEMA {live} RENAME TO {old}")
                    await connection.execute(f'ALTER SCHEMA "{self.schema}" RENAME TO {live}')
                    # Dropping the old tables also invalidates every plan prepared on them:
                    # cached statements of live connections resolve their names again.
                    await connection.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
            finally:
                await connection.close()
        log.info("projection_promoted", projection=self.name, schema=self.live_schema)

    async def copy_live(self) -> dict[str, str]:
        """A --since replay's start (see since.py): the live schema's rows and checkpoint
        copied into this (shadow) schema from one snapshot of the live one (REPEATABLE READ:
        what the live follower commits meanwhile is in none of the tables), so rows and
        checkpoint agree. The copied checkpoint; empty when the live model has none (never
        followed), and then nothing is copied."""
        if self.schema == self.live_schema:
            raise ValueError("copy_live() is for a replay's copy, not the live schema")
        live, s = f'"{self.live_schema}"', f'"{self.schema}"'
        async with asyncio.timeout(DERIVE_TIMEOUT_S):
            connection = await _connect(self.database_url)
            try:
                async with connection.transaction(isolation="repeatable_read"):
                    if not await schema_exists(connection, self.live_schema):
                        return {}
                    rows = await connection.fetch(f"SELECT * FROM {live}.checkpoint")
                    if not rows:
                        return {}
                    for table in (*TABLES, "checkpoint"):
                        columns = ", ".join(
                            f'"{row["column_name"]}"'
                            for row in await connection.fetch(_COLUMNS, self.schema, table)
                        )
                        await connection.execute(
                            f"INSERT INTO {s}.{table} ({columns}) "
                            f"SELECT {columns} FROM {live}.{table}",
                            timeout=DERIVE_TIMEOUT_S,
                        )
            finally:
                await connection.close()
        return {row["stream_key"]: row["position"] for row in rows}

    async def forget(self, sessions: set[str]) -> Forgotten:
        """Delete from this (shadow) copy every row of `sessions` (the statuses of their
        messages included), the statuses of wamids no message has, and every
        projection_errors row, for a --since replay to apply their entries again (since.py);
        what was deleted."""
        if self.schema == self.live_schema:
            raise ValueError("forget() is for a replay's copy, not the live schema")
        s, touched = f'"{self.schema}"', sorted(sessions)
        async with asyncio.timeout(DERIVE_TIMEOUT_S):
            connection = await _connect(self.database_url)
            try:
                async with connection.transaction():
                    known = await connection.fetchval(
                        f"SELECT count(*) FROM {s}.sessions", timeout=DERIVE_TIMEOUT_S
                    )
                    messages = await connection.fetch(
                        f"DELETE FROM {s}.messages WHERE session_id = ANY($1::text[]) "
                        "RETURNING message_id",
                        touched,
                        timeout=DERIVE_TIMEOUT_S,
                    )
                    wamids = {row["message_id"] for row in messages}
                    await connection.execute(
                        f"DELETE FROM {s}.message_statuses WHERE message_id = ANY($1::text[])",
                        sorted(wamids),
                        timeout=DERIVE_TIMEOUT_S,
                    )
                    # Statuses kept for wamids no message has: of no known session, so
                    # rebuilt whole (their entries are applied again, whatever session).
                    orphans = await connection.fetch(
                        f"""DELETE FROM {s}.message_statuses st WHERE NOT EXISTS (
                            SELECT 1 FROM {s}.messages m WHERE m.message_id = st.message_id)
                        RETURNING message_id""",
                        timeout=DERIVE_TIMEOUT_S,
                    )
                    wamids.update(row["message_id"] for row in orphans)
                    for table in ("turn_messages", "turns", "replies", "handoffs", "sessions"):
                        await connection.execute(
                            f"DELETE FROM {s}.{table} WHERE session_id = ANY($1::text[])",
                            touched,
                            timeout=DERIVE_TIMEOUT_S,
                        )
                    errors = await connection.fetch(
                        f"DELETE FROM {s}.projection_errors RETURNING stream_key, entry_id",
                        timeout=DERIVE_TIMEOUT_S,
                    )
            finally:
                await connection.close()
        return Forgotten(
            sessions=int(known),
            messages=frozenset(wamids),
            errors=frozenset((row["stream_key"], row["entry_id"]) for row in errors),
        )

    async def _derive_all(self) -> None:
        """A bulk copy's derived columns, each table in one set-based statement, in the order
        they depend on each other, on two connections: turns and messages on one, the
        identities, sessions and their statuses on the other (they read no column the first
        writes, and count no turn it adds: those have no ready_at); then the secondary
        indexes built, and fresh statistics for the live follower's plans."""
        sql, s = self._sql, f'"{self.schema}"'
        async with asyncio.timeout(DERIVE_TIMEOUT_S):
            async with asyncio.TaskGroup() as group:
                group.create_task(self._derive([sql.derive_turns, sql.derive_messages]))
                group.create_task(
                    self._derive([self._identities, sql.derive_sessions, sql.derive_statuses])
                )
            async with asyncio.TaskGroup() as group:
                for definition in self._deferred_indexes:
                    group.create_task(self._derive([definition]))
                group.create_task(
                    self._derive([drop_staged(s), f"ALTER TABLE {s}.messages RESET (fillfactor)"])
                )
            analyze = [f"ANALYZE {s}.{table}" for table in TABLES]
            async with asyncio.TaskGroup() as group:  # the larger tables on either side
                group.create_task(self._derive(analyze[::2]))
                group.create_task(self._derive(analyze[1::2]))

    async def _derive(self, statements: list[str]) -> None:
        """`statements` in one transaction of a connection of their own."""
        connection = await _connect(self.database_url)
        try:
            async with connection.transaction():
                # whole-table hash joins: in memory rather than in batches on disk
                await connection.execute(f"SET LOCAL work_mem = '{DERIVE_WORK_MEM}'")
                for statement in statements:
                    await connection.execute(statement, timeout=DERIVE_TIMEOUT_S)
        finally:
            await connection.close()

    async def _project_staged(self, connection: asyncpg.Connection, types: set[str]) -> None:
        """The staged entries' rows: each write statement that reads one of `types` once over
        the entries their layout reads, then the rest one by one, each in a savepoint, as
        the follower would (an entry that fails is recorded in projection_errors)."""
        for name, sql in self._staged_sql.items():
            if types & READS[name]:
                await connection.fetch(sql)  # prepared once per connection, not planned each time
        for row in await connection.fetch(REJECTED):
            fields = split_line(row["line"])
            item = decode(row["stream_key"], row["stream"], row["entry_id"], fields)
            rows = Rows()
            rows.add(item)
            try:
                async with connection.transaction():
                    await self._write(connection, rows)
            except Exception as error:
                if self.transient(error):
                    raise
                await connection.execute(
                    self._sql.errors, [item.key], [item.entry_id], [explain(error)]
                )

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

    async def _write(self, connection: asyncpg.Connection, rows: Rows) -> None:
        sql = self._sql
        sessions = set(rows.sessions)
        if rows.inbound:
            # The sessions a repeated wamid leaves are touched too.
            moved = await connection.fetch(sql.inbound, *to_columns(rows.inbound, 5))
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
            await connection.execute(sql.refresh_turns, *to_columns(sorted(rows.turn_keys), 2))
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


# A table's columns, in order (a --since copy names them: the live schema's order may differ).
_COLUMNS = """
    SELECT column_name FROM information_schema.columns
    WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position"""
# The indexes of a schema that are not unique: what ON CONFLICT never needs.
_SECONDARY_INDEXES = """
    SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND NOT i.indisunique"""
_SERVER_SETTINGS = {
    "application_name": "zapstream-sessions",
    "lock_timeout": LOCK_TIMEOUT,
    "jit": "off",  # short set-based statements: compiling them costs more than it saves
}
_CONNECTING = Connecting(
    timeout_s=CONNECT_TIMEOUT_S,
    command_timeout_s=COMMAND_TIMEOUT_S,
    server_settings=_SERVER_SETTINGS,
)


async def _create_staged_entries(connection: asyncpg.Connection) -> None:
    """A bulk copy's pool connection gets its own staging table (sessions_bulk.py)."""
    await connection.execute(STAGED_ENTRIES)


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _execute(
    connection: asyncpg.Connection, sql: str, rows: list[tuple[Any, ...]], width: int
) -> None:
    if rows:
        await connection.execute(sql, *to_columns(rows, width))


async def _connect(url: str) -> asyncpg.Connection:
    return await connect(url, _CONNECTING)
