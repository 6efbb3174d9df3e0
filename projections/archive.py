"""The archive: every entry of every stream, in Parquet files that outlive trimming.

Layout under ARCHIVE_DIR (one writer at a time: `.lock` is held with flock):

    <stream>/p<partition>/<first entry id>_<last entry id>.parquet   one per batch and key
    checkpoint.json                                                 what is archived

A file's columns are `stream`, `stream_key`, `entry_id`, `ms` and `seq` (the id's parts, for
ordering), `type`, `v` and `fields`: every field of the entry as one JSON object of text, so
any version of any event reads back as it was written (envelope.py upcasts it when decoded).

A batch is written file by file, each to a temporary name, fsynced and renamed into place,
and only then is the checkpoint replaced (also written to a temporary name and renamed). A
crash between the two leaves files beyond the checkpoint: at start the writer deletes every
file whose first entry id is past its key's checkpoint, and the batch that follows writes
them again (a file named by the same range is simply replaced). Readers also drop any entry
id they already gave, so an overlap can never double an entry. The archive never skips an
entry: every failure is retried (a stopped archive pins trimming, which is what it must do).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, ClassVar

import duckdb
import msgspec

from projections.follower import START, Failure, Item, Moved, Source, decode
from zapstream.keys import partition_of, stream_keys
from zapstream.topology import Topology

CHECKPOINT = "checkpoint.json"
_ROW = (
    '[{"stream": "VARCHAR", "stream_key": "VARCHAR", "entry_id": "VARCHAR", "ms": "BIGINT", '
    '"seq": "BIGINT", "type": "VARCHAR", "v": "VARCHAR", "fields": "VARCHAR"}]'
)


class Extent(msgspec.Struct, kw_only=True):
    """What the archive holds for one stream key."""

    first: str = ""
    last: str = ""
    files: int = 0
    bytes: int = 0
    entries: int = 0


class Checkpoint(msgspec.Struct, kw_only=True):
    positions: dict[str, str] = {}  # stream key -> the last entry id archived
    extents: dict[str, Extent] = {}


class ArchiveTarget:
    """The `archive` projection: a Follower target over every stream of the topology."""

    name: ClassVar[str] = "archive"
    keeps_fields: ClassVar[bool] = True  # the follower hands it the fields, undecoded

    def __init__(self, directory: str | Path, topology: Topology) -> None:
        self.directory = Path(directory)
        self.streams = tuple(topology.streams)
        self.folders = {
            key: self.directory / stream / f"p{partition_of(key)}"
            for stream in self.streams
            for key in stream_keys(topology, stream)
        }
        self.checkpoint = Checkpoint()
        self._lock: IO[str] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            lock = open(self.directory / ".lock", "w")  # held until close()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                lock.close()
                raise RuntimeError(f"another process archives into {self.directory}") from err
            self._lock = lock
        self.checkpoint = read_checkpoint(self.directory)
        for key, folder in self.folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            archived = self.checkpoint.positions.get(key, START)
            for path in folder.iterdir():
                # Files past the checkpoint were written by a batch that did not commit.
                if path.name.endswith(".tmp") or (
                    path.suffix == ".parquet" and _order(_first_id(path)) > _order(archived)
                ):
                    path.unlink()

    async def positions(self) -> dict[str, str]:
        return dict(self.checkpoint.positions)

    async def apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure] = (),
    ) -> None:
        # `failures` never come: transient() is always true, so no entry is ever skipped.
        for key, position in start.items():
            if self.checkpoint.positions.get(key, START) != position:
                raise Moved(f"archive of {key} is at {self.checkpoint.positions.get(key)}")
        by_key: dict[str, list[Item]] = {}
        for item in items:
            by_key.setdefault(item.key, []).append(item)
        await asyncio.to_thread(self._write, by_key, end)

    def _write(self, by_key: dict[str, list[Item]], end: dict[str, str]) -> None:
        written = msgspec.structs.replace(
            self.checkpoint,
            positions={**self.checkpoint.positions, **end},
            extents=dict(self.checkpoint.extents),
        )
        with duckdb.connect() as con:
            for key, items in by_key.items():
                size = _write_file(con, self.folders[key], key, items)
                was = written.extents.get(key, Extent())
                written.extents[key] = Extent(
                    first=was.first or items[0].entry_id,
                    last=items[-1].entry_id,
                    files=was.files + 1,
                    bytes=was.bytes + size,
                    entries=was.entries + len(items),
                )
        _replace(self.directory / CHECKPOINT, msgspec.json.encode(written))
        self.checkpoint = written

    def transient(self, error: BaseException) -> bool:
        return True  # a full disk or a DuckDB error: retried, never skipped

    async def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def read_checkpoint(directory: str | Path) -> Checkpoint:
    """The archive's checkpoint (empty when nothing is archived yet)."""
    path = Path(directory) / CHECKPOINT
    try:
        return msgspec.json.decode(path.read_bytes(), type=Checkpoint)
    except FileNotFoundError:
        return Checkpoint()


def archive_source(directory: str | Path, topology: Topology) -> Source:
    """A Follower.catch_up source: the archived entries after the given positions, file by
    file in entry-id order per stream key, decoded (and upcast); ids already given are
    dropped."""

    async def source(positions: dict[str, str]) -> AsyncIterator[list[Item]]:
        for stream in topology.streams:
            for key in stream_keys(topology, stream):
                if key not in positions:
                    continue
                folder = Path(directory) / stream / f"p{partition_of(key)}"
                cursor = _order(positions[key])
                files = sorted(folder.glob("*.parquet"), key=lambda p: _order(_first_id(p)))
                for path in files:
                    if _order(_last_id(path)) <= cursor:
                        continue
                    rows = await asyncio.to_thread(_read_file, path)
                    batch = []
                    for entry_id, fields in rows:
                        if _order(entry_id) <= cursor:
                            continue
                        cursor = _order(entry_id)
                        raw = {k.encode(): v.encode() for k, v in fields.items()}
                        batch.append(decode(key, stream, entry_id, raw))
                    if batch:
                        yield batch

    return source


_fields_decoder = msgspec.json.Decoder(dict[str, str])


def _read_file(path: Path) -> list[tuple[str, dict[str, str]]]:
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT entry_id, fields FROM read_parquet(?) ORDER BY ms, seq", [str(path)]
        ).fetchall()
    return [(entry_id, _fields_decoder.decode(fields)) for entry_id, fields in rows]


def _write_file(con: duckdb.DuckDBPyConnection, folder: Path, key: str, items: list[Item]) -> int:
    """Write one key's part of a batch as `<first>_<last>.parquet`; its size in bytes."""
    rows = []
    for item in items:
        fields = item.fields or {}
        ms, _, seq = item.entry_id.partition("-")
        rows.append(
            {
                "stream": item.stream,
                "stream_key": key,
                "entry_id": item.entry_id,
                "ms": int(ms),
                "seq": int(seq or 0),
                "type": fields.get("type", ""),
                "v": fields.get("v", ""),
                "fields": msgspec.json.encode(fields).decode(),
            }
        )
    path = folder / f"{items[0].entry_id}_{items[-1].entry_id}.parquet"
    temporary = path.with_name(path.name + ".tmp")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE batch AS SELECT unnest(from_json(?::JSON, '{_ROW}'), "
        "recursive := true)",
        [msgspec.json.encode(rows).decode()],
    )
    quoted = str(temporary).replace("'", "''")
    con.execute(f"COPY (SELECT * FROM batch ORDER BY ms, seq) TO '{quoted}' (FORMAT parquet)")
    _fsync(temporary)
    os.replace(temporary, path)
    _fsync(folder)
    return path.stat().st_size


def _replace(path: Path, data: bytes) -> None:
    """Write `path` atomically: a temporary file, fsynced, renamed over it."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_id(path: Path) -> str:
    return path.name.removesuffix(".parquet").partition("_")[0]


def _last_id(path: Path) -> str:
    return path.name.removesuffix(".parquet").partition("_")[2]


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
