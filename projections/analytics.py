"""The `analytics` read model: the log's events in DuckDB, and what they add up to.

Landing. `apply` appends every event of a batch to one wide table, `events` (one row per
entry: its stream key, entry id, the entry id's milliseconds `at_ms` as the log's own clock,
and the event's fields the analytics read), records undecodable entries in
`projection_errors(stream_key, entry_id, reason)`, and moves `checkpoint(stream_key,
entry_id)`, all in one DuckDB transaction after checking that the checkpoint is where the
batch starts (else Moved). The rows go in as one statement: each row is JSON encoded by
msgspec and DuckDB parses the list in bulk (`from_json`), about 200,000 rows/s without
pyarrow or pandas (executemany manages about 1,500).

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

Readers. DuckDB lets one process hold a file for writing and no other open it meanwhile, so
readers never open the live file: after a batch (at most every `snapshot_every` seconds, or
less often when a publication is slow, and at close) the target copies `events`,
`checkpoint`, `projection_errors` and every derived relation (materialized) into
`<path>.snapshot.tmp` and renames it over `<path>.snapshot`. A reader (`open_snapshot`,
report.py) opens that read-only and keeps the copy it opened, whatever is published later.

Promotion (replay). A replay fills a fresh file with its own AnalyticsTarget (`rebuild=True`: it
publishes no snapshot, nobody reads it yet; 5,000 entries a batch), then calls
`promote(live_path)`. Whoever writes the live file holds an flock on `<live_path>.lock` for
as long as it has the file open. `promote` closes the rebuilt file and writes the marker
`<live_path>.next` naming it. A live target checks for the marker at every `positions`,
`apply`, and twice a second while idle; finding it, it closes the live file, renames the
rebuilt file over it, reopens, publishes a snapshot, removes the marker, and (from `apply`)
raises Moved so that its follower reloads the positions of the rebuilt file (after an idle
switch, the follower's next batch no longer starts at the checkpoint: Moved again). When
nobody holds the lock, `promote` does the same itself. `promote` returns once the marker is
gone.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

import duckdb
import msgspec
import structlog

from projections.follower import START, Failure, Item, Moved, decode
from zapstream.envelope import UnknownEventError, upcast_fields
from zapstream.events import (
    EVENT_TYPES,
    TYPE_NAMES,
    HandoffReleased,
    HandoffRequested,
    MessageReceived,
    MessageRejected,
    ReplyBlocked,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    ReplySuperseded,
    StatusUpdated,
    TurnReady,
)

log = structlog.get_logger()

T = TypeVar("T")
_Config = dict[str, str | bool | int | float | list[str]]  # duckdb.connect(config=...)

SNAPSHOT_EVERY_S = 5.0
# Entries per read and transaction for a replay's copy (`rebuild=True`): fewer commits;
# 1M events rebuilt: 5,000 as fast as 10,000 or 20,000, peak RSS 318 MB (359, 485).
REBUILD_BATCH = 5_000
WATCH_S = 0.5  # how often an idle target looks for a promoted file and a due snapshot
PROMOTE_TIMEOUT_S = 60.0
# A snapshot copies the whole model: never spend more than about a fifth of the time on it.
SNAPSHOT_COST_SHARE = 0.2

DERIVED = (
    "messages",
    "turns",
    "daily_volume",
    "handoff_rate",
    "superseded_replies",
    "send_failures",
)
SNAPSHOT_TABLES = ("events", "checkpoint", "projection_errors", *DERIVED)


class SnapshotMissing(Exception):
    """No snapshot has been published for this file yet."""


class _Row(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event as `events` holds it; None where the event has no such field."""

    entry_id: str
    stream_key: str
    stream: str
    type: str
    session_id: str
    at_ms: int  # the entry id's milliseconds: when the log took the event
    seq: int  # the entry id's sequence number
    message_id: str | None = None
    kind: str | None = None
    status: str | None = None
    turn_id: str | None = None
    reply_id: str | None = None
    ts: int | None = None  # WhatsApp's timestamp (Unix seconds)
    tokens: int | None = None
    code: int | None = None  # WhatsApp's error code (reply.failed, a failed status)
    reason: str | None = None
    message_ids: list[str] | None = None
    wamids: list[str] | None = None
    phone_number_id: str | None = None
    customer: str | None = None


class _StatusError(msgspec.Struct, frozen=True, kw_only=True):
    code: int | None = None


class _StatusData(msgspec.Struct, frozen=True, kw_only=True):
    """The part of Meta's status object read here: the failure's code."""

    errors: list[_StatusError] = []


_row_encoder = msgspec.json.Encoder()
_status_decoder = msgspec.json.Decoder(_StatusData)


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
    info = msgspec.inspect.type_info(_Row)
    assert isinstance(info, msgspec.inspect.StructType)
    return tuple((f.encode_name, _sql_type(f.type)) for f in info.fields)


EVENT_COLUMNS = _columns()
_ROW_STRUCT = "{" + ", ".join(f'"{name}": "{sql}"' for name, sql in EVENT_COLUMNS) + "}"
_INSERT_EVENTS = (
    f"INSERT INTO events BY NAME SELECT unnest(from_json(line, '{_ROW_STRUCT}')) "
    "FROM (SELECT unnest($1::VARCHAR[]) AS line)"
)

_TABLES = f"""
CREATE TABLE IF NOT EXISTS events ({", ".join(f"{n} {t}" for n, t in EVENT_COLUMNS)});
CREATE TABLE IF NOT EXISTS checkpoint (stream_key VARCHAR NOT NULL, entry_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS projection_errors (
    stream_key VARCHAR NOT NULL, entry_id VARCHAR NOT NULL, reason VARCHAR NOT NULL
);
"""

# The first of duplicates, in the log's own order (never the order they were landed in).
_FIRST = "row_number() OVER (PARTITION BY {} ORDER BY at_ms, seq, stream_key) = 1"
_LAST = "row_number() OVER (PARTITION BY {} ORDER BY at_ms DESC, seq DESC, stream_key DESC) = 1"

_VIEWS = f"""
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


def snapshot_path(path: str | Path) -> Path:
    return Path(f"{path}.snapshot")


def open_snapshot(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the last snapshot of the analytics file at `path`; it keeps
    reading that snapshot whatever is published after. Raises SnapshotMissing."""
    snapshot = snapshot_path(path)
    if not snapshot.exists():
        raise SnapshotMissing(
            f"no analytics snapshot at {snapshot} yet: the analytics follower "
            "(zapstream project) publishes one"
        )
    return duckdb.connect(str(snapshot), read_only=True)


class AnalyticsTarget:
    """The analytics read model in the DuckDB file at `path`, this process its one writer."""

    name: ClassVar[str] = "analytics"
    streams: ClassVar[tuple[str, ...]] = ("messages", "statuses", "turns", "replies", "handoffs")

    def __init__(
        self,
        path: str | Path,
        *,
        memory_limit: str = "256MB",
        threads: int = 2,
        snapshot_every: float = SNAPSHOT_EVERY_S,
        rebuild: bool = False,
    ) -> None:
        """`rebuild`: a replay's copy, which nobody reads before its promotion: it publishes
        no snapshot (promotion publishes one) and asks its follower for larger batches."""
        self.path = Path(path)
        self.config: _Config = {"memory_limit": memory_limit, "threads": threads}
        self.rebuild = rebuild
        self.snapshot_every = math.inf if rebuild else snapshot_every
        if rebuild:
            self.batch = REBUILD_BATCH  # read by Follower
        # One DuckDB connection, used by one worker thread at a time. A threading lock, not an
        # asyncio one: a call cancelled on the loop side goes on in its thread.
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer: IO[str] | None = None  # the flock on <path>.lock while the file is ours
        self._dirty = False  # applied since the last snapshot
        self._published = -math.inf  # time.monotonic() of the last snapshot
        self._publish_cost = 0.0  # seconds the last snapshot took
        self._promoted = False
        self._closing = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    # -- the Target protocol -------------------------------------------------------------

    async def start(self) -> None:
        """Open the file and create what is missing. When another process writes it, return
        anyway: the follower's first `positions` waits for it (a transient failure)."""
        try:
            await self._run(self._start)
        except Exception as err:
            if not self.transient(err):
                raise
            log.warning("analytics_file_busy", path=str(self.path), error=str(err))
        self._watch()

    async def positions(self) -> dict[str, str]:
        positions = await self._run(self._positions)
        self._watch()
        return positions

    async def apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure] = (),
    ) -> None:
        await self._run(self._apply, items, start, end, failures)
        self._watch()

    @staticmethod
    def decode_entry(key: str, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Item:
        """The entry as Follower's decode() reads it, but with its `events` row as JSON in
        `data` instead of an Event when the fast path reads it (see _fast_row)."""
        row = _fast_row(key, stream, entry_id, fields)
        if row is not None:
            return Item(key=key, stream=stream, entry_id=entry_id, event=None, data=row)
        return decode(key, stream, entry_id, fields)

    def transient(self, error: BaseException) -> bool:
        # IOException: the file is locked by another writer, or the disk failed; OSError: our
        # own lock file is held, or a rename failed. Retrying is right for both: recording
        # every entry as a projection error would be wrong.
        return isinstance(
            error,
            duckdb.IOException | duckdb.TransactionException | duckdb.ConnectionException | OSError,
        )

    async def close(self) -> None:
        """Publish what is not published yet, then release the file."""
        await self._stop_watching()
        await self._run(self._close)

    # -- readers, replay -----------------------------------------------------------------

    async def publish(self) -> None:
        """Publish a snapshot now (readers see everything applied so far)."""
        await self._run(self._publish)

    async def read_all(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every derived relation's rows, sorted (to compare a live model with a replayed one)."""
        return await self._run(self._read_all)

    async def promote(self, live_path: str | Path, *, timeout: float = PROMOTE_TIMEOUT_S) -> None:
        """Make this file the live one at `live_path`, handed to the live follower when one
        runs; returns once it is in place and a snapshot of it published. The target is
        spent after. Raises TimeoutError when a live follower holds the file but does not
        take the new one within `timeout`: the marker stays, and the follower takes the file
        when it can, unless the file is dropped meanwhile (the marker is then ignored)."""
        await self._stop_watching()
        await self._run(self._release_for_promotion)
        live = Path(live_path)
        await asyncio.to_thread(_write_marker, live, self.path.resolve())
        log.info("analytics_promoting", rebuilt=str(self.path), live=str(live))
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(_promoted_or_swapped, live, self.config):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the live analytics follower of {live} did not take the rebuilt file "
                    f"within {timeout:g}s; it will when it next runs"
                )
            await asyncio.sleep(0.05)

    async def drop(self) -> None:
        """Delete this file and what goes with it (a replay's shadow, when interrupted)."""
        await self._stop_watching()
        await self._run(self._drop)

    # -- running DuckDB off the event loop -----------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    def _watch(self) -> None:
        """Start the idle watcher (promotions, due snapshots) unless it runs."""
        if self._watcher is None or self._watcher.done():
            self._closing.clear()
            self._watcher = asyncio.create_task(self._watching())

    async def _watching(self) -> None:
        every = min(WATCH_S, self.snapshot_every)
        while True:
            try:
                async with asyncio.timeout(every):
                    await self._closing.wait()
                return
            except TimeoutError:
                pass
            try:
                await self._run(self._tick)
            except (duckdb.Error, OSError) as err:  # the next tick tries again
                log.warning("analytics_watch_failed", error=f"{type(err).__name__}: {err}")

    async def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._closing.set()
            await self._watcher
            self._watcher = None

    # -- what runs in the worker thread (self._lock held) --------------------------------

    def _open(self) -> duckdb.DuckDBPyConnection:
        if self._con is not None:
            return self._con
        if self._promoted:
            raise RuntimeError(f"{self.path} was promoted: this target is spent")
        if self._writer is None:
            self._writer = _hold_writer_lock(self.path)
        con = duckdb.connect(str(self.path), config=self.config)
        try:
            con.execute(_TABLES)
            for name, sql in EVENT_COLUMNS:  # a column added to _Row since the file was made
                con.execute(f"ALTER TABLE events ADD COLUMN IF NOT EXISTS {name} {sql}")
            con.execute(_VIEWS)
        except BaseException:
            con.close()
            raise
        self._con = con
        self._dirty = True  # readers see the file as opened (a promotion, say) soon
        return con

    def _read_all(self) -> dict[str, list[tuple[Any, ...]]]:
        con = self._open()
        return {
            name: con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall() for name in DERIVED
        }

    def _start(self) -> None:
        self._handover()
        self._open()

    def _positions(self) -> dict[str, str]:
        self._handover()
        rows = self._open().execute("SELECT stream_key, entry_id FROM checkpoint").fetchall()
        return {key: entry_id for key, entry_id in rows}

    def _apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure],
    ) -> None:
        if self._handover():
            raise Moved(f"{self.path} was replaced by a rebuilt file")
        for key, entry_id in end.items():
            if _entry_order(entry_id) < _entry_order(start.get(key, START)):
                raise ValueError(f"the checkpoint of {key} would move back to {entry_id}")
        lines = []
        errors = [(f.key, f.entry_id, f.reason) for f in failures]
        for item in items:
            if item.data is not None:
                lines.append(item.data)
            elif item.event is None:
                errors.append((item.key, item.entry_id, item.error))
            else:
                lines.append(_row_encoder.encode(_row(item)).decode())
        con = self._open()
        con.execute("BEGIN TRANSACTION")
        try:
            stored = dict(con.execute("SELECT stream_key, entry_id FROM checkpoint").fetchall())
            elsewhere = {k: v for k, v in start.items() if stored.get(k, START) != v}
            if elsewhere:
                raise Moved(f"checkpoint is not where the batch starts: {elsewhere}")
            if lines:
                con.execute(_INSERT_EVENTS, [lines])
            if errors:
                con.execute(
                    "INSERT INTO projection_errors SELECT unnest($1::VARCHAR[]), "
                    "unnest($2::VARCHAR[]), unnest($3::VARCHAR[])",
                    [list(column) for column in zip(*errors, strict=True)],
                )
            for key, entry_id in end.items():
                if key not in stored:
                    con.execute("INSERT INTO checkpoint VALUES (?, ?)", [key, entry_id])
                elif stored[key] != entry_id:
                    con.execute(
                        "UPDATE checkpoint SET entry_id = ? WHERE stream_key = ?", [entry_id, key]
                    )
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._dirty = True

    def _rollback(self) -> None:
        assert self._con is not None
        try:
            self._con.execute("ROLLBACK")
        except duckdb.Error:
            # The connection is broken (the disk failed, say): open a fresh one next time.
            con, self._con = self._con, None
            con.close()

    def _tick(self) -> None:
        if self._writer is None or self.rebuild:  # not (yet) the writer; a replay's copy
            return
        self._handover()
        pause = max(self.snapshot_every, self._publish_cost / SNAPSHOT_COST_SHARE)
        if self._dirty and time.monotonic() - self._published >= pause:
            self._publish()

    def _publish(self) -> None:
        began = time.monotonic()
        _write_snapshot(self._open(), self.path)
        self._published = time.monotonic()
        self._publish_cost = self._published - began
        self._dirty = False
        log.debug("analytics_snapshot_published", path=str(self.path), took=self._publish_cost)

    def _handover(self) -> bool:
        """Take a promoted file in place of ours, when one waits; whether one did."""
        marker = _marker_path(self.path)
        if not marker.exists():
            return False
        if self._writer is None:
            self._writer = _hold_writer_lock(self.path)
        rebuilt = Path(marker.read_text(encoding="utf-8"))
        self._disconnect()
        if not rebuilt.exists():  # taken already (we stopped before removing the marker) or dropped
            marker.unlink(missing_ok=True)
            return False
        _move_database(rebuilt, self.path)
        self._publish()
        marker.unlink(missing_ok=True)
        log.info("analytics_promoted", path=str(self.path), rebuilt=str(rebuilt))
        return True

    def _disconnect(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            try:
                con.execute("CHECKPOINT")
            finally:
                con.close()

    def _close(self) -> None:
        try:
            if self._con is not None and self._dirty and not self.rebuild:
                self._publish()
        finally:
            try:
                self._disconnect()
            finally:
                self._release_writer_lock()

    def _release_writer_lock(self) -> None:
        if self._writer is not None:
            self._writer.close()  # closing the file releases the flock
            self._writer = None

    def _release_for_promotion(self) -> None:
        self._disconnect()
        self._release_writer_lock()
        self._promoted = True
        for path in (*_snapshot_files(self.path), _lock_path(self.path)):
            path.unlink(missing_ok=True)

    def _drop(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        self._release_writer_lock()
        self._dirty = False
        for path in (
            self.path,
            _wal_path(self.path),
            *_snapshot_files(self.path),
            _lock_path(self.path),
        ):
            path.unlink(missing_ok=True)


def _row(item: Item) -> _Row:
    """The `events` row of a decoded entry; every event type lands, with what analytics reads."""
    event = item.event
    assert event is not None
    ms, _, seq = item.entry_id.partition("-")
    row = _Row(
        entry_id=item.entry_id,
        stream_key=item.key,
        stream=item.stream,
        type=TYPE_NAMES[type(event)],
        session_id=event.session_id,
        at_ms=int(ms),
        seq=int(seq or 0),
    )
    replace = msgspec.structs.replace
    match event:
        case MessageReceived():
            return replace(
                row,
                message_id=event.message_id,
                kind=event.kind,
                ts=event.timestamp,
                phone_number_id=event.phone_number_id,
                customer=event.customer,
            )
        case MessageRejected():
            return replace(
                row,
                message_id=event.message_id,
                reason=event.reason,
                ts=event.timestamp,
                phone_number_id=event.phone_number_id,
                customer=event.customer,
            )
        case StatusUpdated():
            return replace(
                row,
                message_id=event.message_id,
                status=event.status,
                ts=event.timestamp,
                code=_status_code(event.data) if event.status == "failed" else None,
                phone_number_id=event.phone_number_id,
                customer=event.customer,
            )
        case TurnReady():
            return replace(row, turn_id=event.turn_id, message_ids=event.message_ids)
        case ReplyGenerated():
            return replace(
                row,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                tokens=event.tokens,
                message_ids=event.message_ids,
                ts=event.newest_timestamp,
            )
        case ReplySent():
            return replace(
                row,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                message_id=event.message_id,
                wamids=event.wamids,
            )
        case ReplyFailed():
            return replace(
                row,
                turn_id=event.turn_id,
                reply_id=event.reply_id,
                code=event.code,
                reason=event.reason,
            )
        case ReplyBlocked():
            return replace(row, turn_id=event.turn_id, reply_id=event.reply_id, reason=event.reason)
        case ReplySuperseded():
            return replace(row, turn_id=event.turn_id, reply_id=event.reply_id, tokens=event.tokens)
        case HandoffRequested() | HandoffReleased():
            return replace(row, turn_id=event.turn_id)
        case _:  # a type analytics does not read yet: landed with what every event has
            return row


class _Plan(msgspec.Struct, frozen=True):
    """How _fast_row reads one event type: what decode_fields would check, and the columns."""

    required: frozenset[str]  # fields without a default
    ints: tuple[str, ...]
    lists: tuple[str, ...]  # list[str], JSON in the entry
    defaults: dict[str, Any]
    columns: tuple[tuple[str, str], ...]  # (column of `events`, the event's field)


# The columns _row fills from each event type's fields (ts, code: see _fast_row).
_ROW_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "message.received": (
        ("message_id", "message_id"),
        ("kind", "kind"),
        ("ts", "timestamp"),
        ("phone_number_id", "phone_number_id"),
        ("customer", "customer"),
    ),
    "message.rejected": (
        ("message_id", "message_id"),
        ("reason", "reason"),
        ("ts", "timestamp"),
        ("phone_number_id", "phone_number_id"),
        ("customer", "customer"),
    ),
    "status.updated": (
        ("message_id", "message_id"),
        ("status", "status"),
        ("ts", "timestamp"),
        ("phone_number_id", "phone_number_id"),
        ("customer", "customer"),
    ),
    "turn.ready": (("turn_id", "turn_id"), ("message_ids", "message_ids")),
    "reply.generated": (
        ("turn_id", "turn_id"),
        ("reply_id", "reply_id"),
        ("tokens", "tokens"),
        ("message_ids", "message_ids"),
        ("ts", "newest_timestamp"),
    ),
    "reply.sent": (
        ("turn_id", "turn_id"),
        ("reply_id", "reply_id"),
        ("message_id", "message_id"),
        ("wamids", "wamids"),
    ),
    "reply.failed": (
        ("turn_id", "turn_id"),
        ("reply_id", "reply_id"),
        ("code", "code"),
        ("reason", "reason"),
    ),
    "reply.blocked": (("turn_id", "turn_id"), ("reply_id", "reply_id"), ("reason", "reason")),
    "reply.superseded": (("turn_id", "turn_id"), ("reply_id", "reply_id"), ("tokens", "tokens")),
    "handoff.requested": (("turn_id", "turn_id"),),
    "handoff.released": (("turn_id", "turn_id"),),
}


def _plan(name: str) -> _Plan | None:
    """The fast path's plan for an event type; None when it has fields of another type than
    str, int or list[str] (decode_fields reads those)."""
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
    return _Plan(
        required=frozenset(required),
        ints=tuple(ints),
        lists=tuple(lists),
        defaults=defaults,
        columns=_ROW_FIELDS.get(name, ()),
    )


_PLANS = {name: plan for name in EVENT_TYPES if (plan := _plan(name)) is not None}
_list_decoder = msgspec.json.Decoder(list[str])


def _plain_int(text: str) -> bool:
    """Whether decode_fields reads `text` as this very int: plain decimal digits, no leading
    zero (anything else is left to it)."""
    digits = text[1:] if text.startswith("-") else text
    return (
        0 < len(digits) <= 18
        and digits.isascii()
        and digits.isdigit()
        and (digits[0] != "0" or text == "0")
    )


def _fast_row(key: str, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> str | None:
    """The `events` row of an entry as JSON, exactly what _row makes of the event
    decode_fields reads, without building that event; None when the entry needs
    decode_fields' own reading (it may be undecodable: its error is decode_fields')."""
    try:
        values: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
        name = values.get("type", "")
        plan = _PLANS.get(name)
        if plan is None:
            return None
        values = upcast_fields(name, values)
    except (UnicodeDecodeError, UnknownEventError):
        return None
    if not plan.required <= values.keys():
        return None
    for field in plan.ints:
        if field in values:
            if not _plain_int(values[field]):
                return None
            values[field] = int(values[field])
    for field in plan.lists:
        if field in values:
            try:
                values[field] = _list_decoder.decode(values[field])
            except msgspec.DecodeError:  # ValidationError included
                return None
    ms, _, seq = entry_id.partition("-")
    row: dict[str, Any] = {
        "entry_id": entry_id,
        "stream_key": key,
        "stream": stream,
        "type": name,
        "session_id": values.get("session_id", ""),
        "at_ms": int(ms),
        "seq": int(seq or 0),
    }
    defaults = plan.defaults
    for column, field in plan.columns:
        row[column] = values[field] if field in values else defaults[field]
    if name == "status.updated" and values["status"] == "failed":
        code = _status_code(values["data"])
        if code is not None:
            row["code"] = code
    return _row_encoder.encode(row).decode()


def _status_code(data: str) -> int | None:
    """The error code of a failed status, from Meta's status object; None when absent."""
    try:
        errors = _status_decoder.decode(data).errors
    except msgspec.DecodeError:  # Meta's JSON, not ours: a missing code is not an error
        return None
    return errors[0].code if errors else None


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _wal_path(path: Path) -> Path:
    return Path(f"{path}.wal")


def _lock_path(path: Path) -> Path:
    return Path(f"{path}.lock")


def _marker_path(path: Path) -> Path:
    return Path(f"{path}.next")


def _snapshot_files(path: Path) -> tuple[Path, ...]:
    snapshot = snapshot_path(path)
    tmp = Path(f"{snapshot}.tmp")
    return (snapshot, tmp, _wal_path(tmp))


def _hold_writer_lock(path: Path) -> IO[str]:
    """The flock that says a process writes `path`; BlockingIOError when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never unlinked for a live file: a process locking a fresh inode would not see ours.
    lock = _lock_path(path).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        lock.close()
        raise BlockingIOError(err.errno, f"another process writes {path}") from err
    except BaseException:
        lock.close()
        raise
    return lock


def _write_snapshot(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy the model into `<path>.snapshot.tmp`, then rename it over `<path>.snapshot`."""
    snapshot, tmp, tmp_wal = _snapshot_files(path)
    tmp.unlink(missing_ok=True)
    tmp_wal.unlink(missing_ok=True)
    quoted = str(tmp).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS snapshot_copy")
    try:
        con.execute("BEGIN TRANSACTION")  # one read view for every table copied
        try:
            for name in SNAPSHOT_TABLES:
                con.execute(f"CREATE TABLE snapshot_copy.{name} AS SELECT * FROM main.{name}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.execute("DETACH snapshot_copy")  # checkpoints the copy: no WAL is left beside it
    os.replace(tmp, snapshot)


def _move_database(source: Path, target: Path) -> None:
    """Rename a closed DuckDB file over another one, with its WAL (if any) or none."""
    _wal_path(target).unlink(missing_ok=True)  # would otherwise be replayed into the new file
    if _wal_path(source).exists():
        os.replace(_wal_path(source), _wal_path(target))
    os.replace(source, target)


def _write_marker(live: Path, rebuilt: Path) -> None:
    marker = _marker_path(live)
    tmp = Path(f"{marker}.tmp")
    tmp.write_text(str(rebuilt), encoding="utf-8")
    os.replace(tmp, marker)


def _promoted_or_swapped(live: Path, config: _Config) -> bool:
    """Whether the marker of `live` is gone; swaps the file here when no writer holds it."""
    marker = _marker_path(live)
    if not marker.exists():
        return True
    try:
        writer = _hold_writer_lock(live)
    except BlockingIOError:  # a live follower holds it: it takes the marker
        return False
    try:
        if not marker.exists():
            return True
        _move_database(Path(marker.read_text(encoding="utf-8")), live)
        con = duckdb.connect(str(live), config=config)
        try:
            con.execute(_VIEWS)
            _write_snapshot(con, live)
        finally:
            con.close()
        marker.unlink()
        log.info("analytics_promoted", path=str(live))
        return True
    finally:
        writer.close()
