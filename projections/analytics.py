"""The `analytics` read model: the log's events in DuckDB, and what they add up to.

Landing. `apply` appends every event of a batch to one wide table, `events` (one row per
entry, built in analytics_rows.py), records undecodable entries in `projection_errors`, and
moves `checkpoint(stream_key, entry_id)`, all in one DuckDB transaction after checking that
the checkpoint is where the batch starts (else Moved). The rows go in as one statement
(analytics_sql.INSERT_EVENTS). Derived relations (messages, turns, daily_volume,
handoff_rate, superseded_replies, send_failures) are views over `events`, in
analytics_sql.py.

Readers. Readers never open the live file (DuckDB allows one writer and no reader beside
it): after a batch (at most every `snapshot_every` seconds, or less often when a
publication is slow, and at close) the target publishes a snapshot of the whole model at
`<path>.snapshot` (analytics_files.py). A reader (`open_snapshot`, report.py) opens that
read-only and keeps the copy it opened, whatever is published later.

Promotion (replay). A replay fills a fresh file with its own AnalyticsTarget (`rebuild=True`:
it publishes no snapshot, nobody reads it yet; it takes XRANGE's replies as they are and
DuckDB parses them, analytics_bulk.py), then calls `promote(live_path)`. Whoever writes the
live file holds an flock on `<live_path>.lock` for as long as it has the file open.
`promote` closes the rebuilt file and writes the marker `<live_path>.next` naming it. A live
target checks for the marker at every `positions`, `apply`, and twice a second while idle;
finding it, it closes the live file, renames the rebuilt file over it, reopens, publishes a
snapshot, removes the marker, and (from `apply`) raises Moved so that its follower reloads
the positions of the rebuilt file (after an idle switch, the follower's next batch no longer
starts at the checkpoint: Moved again). When nobody holds the lock, `promote` does the same
itself. `promote` returns once the marker is gone. The snapshot a promotion publishes has
the derived relations as views (computed as a reader queries them), so that the new model
is readable at once; the live follower's next snapshot, `snapshot_every` later, has them as
tables again (at 1,000,000 events, materializing took 1.5-3.7 s, `report` over the views
about 2 s instead of 0.02 s).
"""

from __future__ import annotations

import asyncio
import functools
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

import duckdb
import structlog

from projections.analytics_bulk import join_chunk, land, rejected
from projections.analytics_files import (
    Config,
    hold_writer_lock,
    lock_path,
    marker_path,
    move_database,
    promoted_or_swapped,
    snapshot_files,
    snapshot_path,
    wal_path,
    write_marker,
    write_snapshot,
)
from projections.analytics_rows import entry_order, event_row, fast_row, row_encoder
from projections.analytics_sql import DERIVED, EVENT_COLUMNS, INSERT_EVENTS, TABLES, VIEWS
from projections.follower import (
    LOG_STREAMS,
    START,
    Failure,
    Item,
    Moved,
    RawChunk,
    decode,
    entry_fields,
)
from projections.since import Forgotten

log = structlog.get_logger()

T = TypeVar("T")

SNAPSHOT_EVERY_S = 5.0
# Entries per read and transaction for a replay's copy (`rebuild=True`): fewer commits;
# 1M events rebuilt: 5,000 as fast as 10,000 or 20,000, peak RSS 318 MB (359, 485).
REBUILD_BATCH = 5_000
REBUILD_RAW_BATCH = 20_000  # entries per XRANGE, loaded in bulk
REBUILD_COMMIT_ROWS = 122_880  # a replay's copy commits this often: one DuckDB row group
WATCH_S = 0.5  # how often an idle target looks for a promoted file and a due snapshot
PROMOTE_TIMEOUT_S = 60.0
# A snapshot copies the whole model: never spend more than about a fifth of the time on it.
SNAPSHOT_COST_SHARE = 0.2


class SnapshotMissing(Exception):
    """No snapshot has been published for this file yet."""


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
    # `operations` too: its events land in `events`, read by no view.
    streams: ClassVar[tuple[str, ...]] = LOG_STREAMS

    def __init__(
        self,
        path: str | Path,
        *,
        memory_limit: str = "256MB",
        threads: int = 2,
        snapshot_every: float = SNAPSHOT_EVERY_S,
        rebuild: bool = False,
        commit_rows: int = REBUILD_COMMIT_ROWS,
    ) -> None:
        """`rebuild`: a replay's copy, which nobody reads before its promotion: it publishes
        no snapshot (promotion publishes one), asks its follower for larger batches, and
        commits every `commit_rows` rows (see _transaction)."""
        self.path = Path(path)
        self.config: Config = {"memory_limit": memory_limit, "threads": threads}
        self.rebuild = rebuild
        self.commit_rows = commit_rows
        self.snapshot_every = math.inf if rebuild else snapshot_every
        if rebuild:
            self.batch = REBUILD_BATCH  # read by Follower
            self.raw_batch = REBUILD_RAW_BATCH  # Follower loads XRANGE replies in bulk
        # One DuckDB connection, used by one worker thread at a time. A threading lock, not an
        # asyncio one: a call cancelled on the loop side goes on in its thread.
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer: IO[str] | None = None  # the flock on <path>.lock while the file is ours
        self._uncommitted = 0  # rows landed in the open transaction (a replay's copy)
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

    async def apply_raw(self, chunk: RawChunk, start: dict[str, str], end: dict[str, str]) -> None:
        """apply() for a replay's copy, from XRANGE's reply (analytics_bulk.py)."""
        await self._run(self._apply_raw, chunk, start, end)

    @staticmethod
    def decode_entry(key: str, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Item:
        """The entry as Follower's decode() reads it, but with its `events` row as JSON in
        `data` instead of an Event when the fast path reads it (see fast_row)."""
        row = fast_row(key, stream, entry_id, fields)
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
        await asyncio.to_thread(write_marker, live, self.path.resolve())
        log.info("analytics_promoting", rebuilt=str(self.path), live=str(live))
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(promoted_or_swapped, live, self.config):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the live analytics follower of {live} did not take the rebuilt file "
                    f"within {timeout:g}s; it will when it next runs"
                )
            await asyncio.sleep(0.05)

    async def copy_snapshot(self, live_path: str | Path) -> bool:
        """A --since replay's start (see since.py): this (rebuild) file made a copy of the last
        snapshot the live follower published at `live_path`, which carries its checkpoint, its
        derived relations made views again. False when none was published (then nothing is
        copied). Called before start()."""
        return await self._run(self._copy_snapshot, Path(live_path))

    async def forget(self, sessions: set[str]) -> Forgotten:
        """Delete from this (rebuild) copy the `events` rows of `sessions` and every
        projection_errors row, for a --since replay to apply their entries again; what was
        deleted."""
        return await self._run(self._forget, sorted(sessions))

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
            self._writer = hold_writer_lock(self.path)
        con = duckdb.connect(str(self.path), config=self.config)
        try:
            con.execute(TABLES)
            for name, sql in EVENT_COLUMNS:  # a column added to Row since the file was made
                con.execute(f"ALTER TABLE events ADD COLUMN IF NOT EXISTS {name} {sql}")
            con.execute(VIEWS)
        except BaseException:
            con.close()
            raise
        self._con = con
        self._dirty = True  # readers see the file as opened (a promotion, say) soon
        return con

    def _read_all(self) -> dict[str, list[tuple[Any, ...]]]:
        con = self._open()
        self._commit()
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
        lines, errors = _rows(items, failures)
        self._transaction(start, end, lambda con: _land(con, lines, errors), len(items))

    def _apply_raw(self, chunk: RawChunk, start: dict[str, str], end: dict[str, str]) -> None:
        joined, types = join_chunk(chunk.entries)  # ValueError: the follower applies Items
        land = functools.partial(_land_raw, chunk=chunk, joined=joined, types=types)
        self._transaction(start, end, land, len(chunk.entries))

    def _transaction(
        self,
        start: dict[str, str],
        end: dict[str, str],
        land: Callable[[duckdb.DuckDBPyConnection], None],
        rows: int,
    ) -> None:
        """In one transaction: check the checkpoint is at `start` (else Moved), land the rows,
        and move the checkpoint to `end`.

        A replay's copy commits every REBUILD_COMMIT_ROWS rows instead (group commit): each
        DuckDB commit writes its WAL, a large transaction writes its row groups straight to
        the file, and nobody reads the copy before it is promoted. A failure rolls back every
        batch since the last commit: the next batch then finds the checkpoint behind its
        start (Moved) and the follower reads again from there."""
        if self._handover():
            raise Moved(f"{self.path} was replaced by a rebuilt file")
        for key, entry_id in end.items():
            if entry_order(entry_id) < entry_order(start.get(key, START)):
                raise ValueError(f"the checkpoint of {key} would move back to {entry_id}")
        con = self._open()
        if not self._uncommitted:
            con.execute("BEGIN TRANSACTION")
        try:
            stored = dict(con.execute("SELECT stream_key, entry_id FROM checkpoint").fetchall())
            elsewhere = {k: v for k, v in start.items() if stored.get(k, START) != v}
            if elsewhere:
                raise Moved(f"checkpoint is not where the batch starts: {elsewhere}")
            land(con)
            for key, entry_id in end.items():
                if key not in stored:
                    con.execute("INSERT INTO checkpoint VALUES (?, ?)", [key, entry_id])
                elif stored[key] != entry_id:
                    con.execute(
                        "UPDATE checkpoint SET entry_id = ? WHERE stream_key = ?", [entry_id, key]
                    )
            self._uncommitted += max(rows, 1)
            if not self.rebuild or self._uncommitted >= self.commit_rows:
                self._commit()
        except BaseException:
            self._uncommitted = 0
            self._rollback()
            raise
        self._dirty = True

    def _commit(self) -> None:
        """Commit the open transaction, if any (a replay's copy leaves one open between
        batches: see _transaction)."""
        if self._uncommitted and self._con is not None:
            self._con.execute("COMMIT")
        self._uncommitted = 0

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

    def _publish(self, *, materialize: bool = True) -> None:
        began = time.monotonic()
        write_snapshot(self._open(), self.path, self.config, materialize=materialize)
        self._published = time.monotonic()
        self._publish_cost = self._published - began
        # A snapshot of views (a promotion's) is followed by one of tables at the next tick.
        self._dirty = not materialize
        log.debug("analytics_snapshot_published", path=str(self.path), took=self._publish_cost)

    def _handover(self) -> bool:
        """Take a promoted file in place of ours, when one waits; whether one did."""
        marker = marker_path(self.path)
        if not marker.exists():
            return False
        if self._writer is None:
            self._writer = hold_writer_lock(self.path)
        rebuilt = Path(marker.read_text(encoding="utf-8"))
        self._disconnect()
        if not rebuilt.exists():  # taken already (we stopped before removing the marker) or dropped
            marker.unlink(missing_ok=True)
            return False
        move_database(rebuilt, self.path)
        self._publish(materialize=False)  # the new model readable now; tables at the next tick
        marker.unlink(missing_ok=True)
        log.info("analytics_promoted", path=str(self.path), rebuilt=str(rebuilt))
        return True

    def _disconnect(self) -> None:
        if self._con is not None:
            self._commit()
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

    def _copy_snapshot(self, live: Path) -> bool:
        if not self.rebuild:
            raise ValueError("copy_snapshot() is for a replay's copy, not the live file")
        snapshot = snapshot_path(live)
        try:
            shutil.copyfile(snapshot, self.path)
        except FileNotFoundError:
            return False
        con = duckdb.connect(str(self.path), config=self.config)
        try:
            found = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            tables = {name for (name,) in found}
            for name in reversed(DERIVED):  # materialized by write_snapshot: views again
                if name in tables:
                    con.execute(f"DROP TABLE {name}")
        finally:
            con.close()
        return True

    def _forget(self, sessions: list[str]) -> Forgotten:
        con = self._open()
        self._commit()
        con.execute("BEGIN TRANSACTION")
        try:
            found = con.execute(
                "SELECT count(DISTINCT session_id) FROM events WHERE session_id <> ''"
            ).fetchone()
            con.execute(
                "DELETE FROM events WHERE session_id IN (SELECT unnest($1::VARCHAR[]))", [sessions]
            )
            errors = con.execute("SELECT stream_key, entry_id FROM projection_errors").fetchall()
            con.execute("DELETE FROM projection_errors")
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return Forgotten(
            sessions=int(found[0]) if found else 0,
            errors=frozenset((key, entry_id) for key, entry_id in errors),
        )

    def _release_for_promotion(self) -> None:
        self._disconnect()
        self._release_writer_lock()
        self._promoted = True
        for path in (*snapshot_files(self.path), lock_path(self.path)):
            path.unlink(missing_ok=True)

    def _drop(self) -> None:
        self._uncommitted = 0  # rolled back by the close: the file goes anyway
        if self._con is not None:
            self._con.close()
            self._con = None
        self._release_writer_lock()
        self._dirty = False
        for path in (
            self.path,
            wal_path(self.path),
            *snapshot_files(self.path),
            lock_path(self.path),
        ):
            path.unlink(missing_ok=True)


def _rows(items: Sequence[Item], failures: Sequence[Failure]) -> tuple[list[str], list[Any]]:
    """The `events` rows of decoded entries as JSON lines, and the projection_errors rows."""
    lines = []
    errors = [(f.key, f.entry_id, f.reason) for f in failures]
    for item in items:
        if item.data is not None:
            lines.append(item.data)
        elif item.event is None:
            errors.append((item.key, item.entry_id, item.error))
        else:
            lines.append(row_encoder.encode(event_row(item)).decode())
    return lines, errors


def _land(con: duckdb.DuckDBPyConnection, lines: list[str], errors: list[Any]) -> None:
    if lines:
        con.execute(INSERT_EVENTS, [lines])
    if errors:
        con.execute(
            "INSERT INTO projection_errors SELECT unnest($1::VARCHAR[]), "
            "unnest($2::VARCHAR[]), unnest($3::VARCHAR[])",
            [list(column) for column in zip(*errors, strict=True)],
        )


def _land_raw(
    con: duckdb.DuckDBPyConnection, chunk: RawChunk, joined: list[str], types: frozenset[str]
) -> None:
    """A chunk parsed and landed set-based, and the entries set-based reading leaves
    (analytics_bulk.rejected) read one by one, as every entry is outside a replay."""
    found = con.execute(land(types), [*joined, chunk.key, chunk.stream]).fetchone()
    if found is not None and found[0] == len(chunk.entries):
        return
    left = {entry_id for (entry_id,) in con.execute(rejected(types), joined).fetchall()}
    items = [
        AnalyticsTarget.decode_entry(chunk.key, chunk.stream, entry_id, entry_fields(flat))
        for raw_id, flat in chunk.entries
        if (entry_id := raw_id.decode()) in left
    ]
    _land(con, *_rows(items, ()))
