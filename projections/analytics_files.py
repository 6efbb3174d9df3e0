"""The files of an analytics model beside its DuckDB file: snapshot, lock, promotion marker.

Readers. DuckDB lets one process hold a file for writing and no other open it meanwhile, so
readers never open the live file: the writer copies the file (after a checkpoint) to
`<path>.snapshot.tmp`, materializes every derived relation in the copy, and renames it over
`<path>.snapshot` (`write_snapshot`); readers open that read-only. A promotion publishes the
rebuilt file's copy with its derived relations still views (readers get the new model at
once, and compute those relations as they read them) and the live follower's next snapshot
materializes them.

Writer and promotion. Whoever writes a file holds an flock on `<path>.lock` for as long as it
has the file open (`hold_writer_lock`). A replay's rebuilt file is handed over by writing
the marker `<live>.next` naming it (`write_marker`); the live writer, or when nobody holds
the lock `promoted_or_swapped` itself, renames the rebuilt file over the live one
(`move_database`), publishes a snapshot and removes the marker.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import IO

import duckdb
import structlog

from projections.analytics_sql import DERIVED, VIEWS

log = structlog.get_logger()

Config = dict[str, str | bool | int | float | list[str]]  # duckdb.connect(config=...)


def snapshot_path(path: str | Path) -> Path:
    return Path(f"{path}.snapshot")


def wal_path(path: Path) -> Path:
    return Path(f"{path}.wal")


def lock_path(path: Path) -> Path:
    return Path(f"{path}.lock")


def marker_path(path: Path) -> Path:
    return Path(f"{path}.next")


def snapshot_files(path: Path) -> tuple[Path, ...]:
    snapshot = snapshot_path(path)
    tmp = Path(f"{snapshot}.tmp")
    return (snapshot, tmp, wal_path(tmp))


def hold_writer_lock(path: Path) -> IO[str]:
    """The flock that says a process writes `path`; BlockingIOError when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never unlinked for a live file: a process locking a fresh inode would not see ours.
    lock = lock_path(path).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        lock.close()
        raise BlockingIOError(err.errno, f"another process writes {path}") from err
    except BaseException:
        lock.close()
        raise
    return lock


def write_snapshot(
    con: duckdb.DuckDBPyConnection, path: Path, config: Config, *, materialize: bool = True
) -> None:
    """Copy the model into `<path>.snapshot.tmp`, then rename it over `<path>.snapshot`.

    The file is checkpointed and copied as it is (no row decoded and encoded again, which
    took most of a replay's promotion), then the copy's views are materialized: a reader
    gets `events`, `checkpoint`, `projection_errors` and every derived relation as tables.
    Without `materialize` (a promotion's, see analytics.py) the derived relations stay views
    that a reader computes as it queries them: the same rows, read slower, published at once.
    `con` is the writer's connection to `path`, idle."""
    snapshot, tmp, tmp_wal = snapshot_files(path)
    tmp.unlink(missing_ok=True)
    tmp_wal.unlink(missing_ok=True)
    con.execute("CHECKPOINT")  # everything in the file: no WAL to copy
    shutil.copyfile(path, tmp)
    if materialize:
        copy = duckdb.connect(str(tmp), config=config)
        try:
            for name in DERIVED:
                copy.execute(f"CREATE TABLE {name}_materialized AS SELECT * FROM {name}")
            for name in reversed(DERIVED):  # a view before those it reads (daily_volume)
                copy.execute(f"DROP VIEW {name}")
            for name in DERIVED:
                copy.execute(f"ALTER TABLE {name}_materialized RENAME TO {name}")
        finally:
            copy.close()  # checkpoints the copy: no WAL is left beside it
    os.replace(tmp, snapshot)


def move_database(source: Path, target: Path) -> None:
    """Rename a closed DuckDB file over another one, with its WAL (if any) or none."""
    wal_path(target).unlink(missing_ok=True)  # would otherwise be replayed into the new file
    if wal_path(source).exists():
        os.replace(wal_path(source), wal_path(target))
    os.replace(source, target)


def write_marker(live: Path, rebuilt: Path) -> None:
    marker = marker_path(live)
    tmp = Path(f"{marker}.tmp")
    tmp.write_text(str(rebuilt), encoding="utf-8")
    os.replace(tmp, marker)


def promoted_or_swapped(live: Path, config: Config) -> bool:
    """Whether the marker of `live` is gone; swaps the file here when no writer holds it."""
    marker = marker_path(live)
    if not marker.exists():
        return True
    try:
        writer = hold_writer_lock(live)
    except BlockingIOError:  # a live follower holds it: it takes the marker
        return False
    try:
        if not marker.exists():
            return True
        move_database(Path(marker.read_text(encoding="utf-8")), live)
        con = duckdb.connect(str(live), config=config)
        try:
            con.execute(VIEWS)
            # Views, not tables: the next live follower's snapshot materializes them.
            write_snapshot(con, live, config, materialize=False)
        finally:
            con.close()
        marker.unlink()
        log.info("analytics_promoted", path=str(live))
        return True
    finally:
        writer.close()
