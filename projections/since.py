"""What `replay --since TIME` recomputes: the sessions the events since TIME touch, and a
target that re-applies only their entries.

A --since replay starts from a consistent copy of the live model (rows and checkpoint from
one snapshot) instead of an empty one, deletes in it every row of the touched sessions, and
re-applies their entries from the whole history (archive, then streams) up to the copy's
checkpoint; it then follows the rest of the log like a full replay (replay.py). So a touched
session is rebuilt from all its entries, with today's code, and an untouched one keeps the
rows the live model had: the result equals a full replay whenever the live model was right
for the sessions nobody touched since TIME.

Touched. A session is touched when an entry of it (`session_id`) has an id at or after TIME
(entry ids are the log's milliseconds) in the archive or the streams, up to the positions
the replay follows to. An entry with no session (a status for a wamid nobody sent, a
rejected message without a sender) touches nothing: its rows belong to no session; one
before the copy's checkpoint is in the copy already, one after it is followed.

Re-applied. The entries of touched sessions; for the sessions model also every status of a
message of a touched session, whatever session the status names (a status can arrive with
none), as `message_statuses` is keyed by message, and every status of a wamid no message has
(kept for a reply.sent not read yet: of no known session, so rebuilt whole); and every entry
the copy had recorded in `projection_errors` (that table is not per session either: the
copy's rows are dropped and those entries applied again, so an entry that reads today is
projected, one that still fails is recorded again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
from redis.asyncio import Redis

from projections.follower import (
    REDIS_TIMEOUT_S,
    START,
    BulkTarget,
    Failure,
    Item,
    Moved,
    RawChunk,
    Source,
    _before,
    _raw_client,
)
from zapstream.events import StatusUpdated

SCAN_BATCH = 10_000  # entries per XRANGE while looking for the touched sessions
_SESSION, _MESSAGE, _STATUS = b"session_id", b"message_id", b"status.updated"
_LAST_SEQ = 2**64 - 1


class Forgotten(msgspec.Struct, frozen=True, kw_only=True):
    """What a copy dropped before re-applying: its session count before, the message ids
    whose statuses it dropped (sessions model: the touched sessions' messages, and wamids no
    message has), and the entries its projection_errors held."""

    sessions: int
    messages: frozenset[str] = frozenset()
    errors: frozenset[tuple[str, str]] = frozenset()


def first_id(ms: int) -> str:
    """The position just before the first entry id of millisecond `ms`."""
    return f"{ms - 1}-{_LAST_SEQ}" if ms > 0 else START


def session_of(fields: list[bytes]) -> bytes:
    """The `session_id` of an entry as XRANGE returns its fields ([field, value, ...]); b""
    when it has none. encode_fields writes it third, after `type` and `v`."""
    if len(fields) > 5 and fields[4] == _SESSION:
        return fields[5]
    return _field(fields, _SESSION)


def _field(fields: list[bytes], name: bytes) -> bytes:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return b""


async def touched_sessions(
    redis: Redis, since_ms: int, until: dict[str, str], archive: Source
) -> set[str]:
    """The sessions of the entries with ids at or after `since_ms` up to `until` (per stream
    key), in the archive (for what the streams no longer hold) and in the streams."""
    found: set[bytes] = set()
    start = {key: first_id(since_ms) for key in until}
    async for batch in archive(start):
        for item in batch:
            if item.event is not None and not _before(until[item.key], item.entry_id):
                found.add(item.event.session_id.encode())
    raw = _raw_client(redis)
    try:
        for key, end in until.items():
            after = start[key]
            while _before(after, end):
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    # hiredis's reply as it is: [[id, [field, value, ...]], ...]
                    entries: Any = await raw.xrange(key, min=f"({after}", max=end, count=SCAN_BATCH)
                if not entries:
                    break
                found.update(session_of(fields) for _, fields in entries)
                after = entries[-1][0].decode()
    finally:
        await raw.aclose()
    found.discard(b"")
    return {session.decode() for session in found}


class Reapply:
    """A Follower target over a replay's copy that passes on only the entries to re-apply
    (see the module's doc), up to `until` (the copy's checkpoint), and never moves the copy's
    checkpoint: its own positions are kept in memory, for the follower reading the log from
    the start. `applied` counts the entries passed on."""

    name: ClassVar[str] = "reapply"

    def __init__(
        self,
        target: BulkTarget,
        sessions: set[str],
        forgotten: Forgotten,
        until: dict[str, str],
    ) -> None:
        self.target = target
        self.until = until
        self.sessions = {session.encode() for session in sessions}
        self.session_ids = sessions
        self.messages = forgotten.messages
        self.message_bytes = {message.encode() for message in forgotten.messages}
        self.errors = forgotten.errors
        self.raw_batch = target.raw_batch  # Follower loads XRANGE replies in bulk
        self.raw_lanes: int = getattr(target, "raw_lanes", 1)
        self.applied = 0
        self._positions: dict[str, str] = {}
        self._passed: set[tuple[str, str]] = set()  # the last batch's, for its failures

    @property
    def streams(self) -> tuple[str, ...]:
        return self.target.streams

    async def start(self) -> None:
        """Nothing: the copy is started by the replay."""

    async def positions(self) -> dict[str, str]:
        return dict(self._positions)

    async def apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure] = (),
    ) -> None:
        self._check(start)
        passed = [item for item in items if self._wanted_item(item)]
        self._passed = {(item.key, item.entry_id) for item in passed}
        kept = [f for f in failures if (f.key, f.entry_id) in self._passed | self.errors]
        if passed or kept:
            await self.target.apply(passed, {}, {}, kept)
        self._moved(end, len(passed))

    async def apply_raw(self, chunk: RawChunk, start: dict[str, str], end: dict[str, str]) -> None:
        self._check(start)
        # The follower reads the streams up to `until` only: no entry of a chunk is after it.
        entries = [entry for entry in chunk.entries if self._wanted_raw(chunk.key, entry)]
        if entries:
            # ValueError: not loadable in bulk, and the follower applies Items (apply()).
            await self.target.apply_raw(
                RawChunk(key=chunk.key, stream=chunk.stream, entries=entries), {}, {}
            )
        self._moved(end, len(entries))

    def transient(self, error: BaseException) -> bool:
        return self.target.transient(error)

    async def close(self) -> None:
        """Nothing: the copy is closed by the replay."""

    def _check(self, start: dict[str, str]) -> None:
        for key, position in start.items():
            if self._positions.get(key, START) != position:
                raise Moved(f"{key}: at {self._positions.get(key, START)}, not {position}")

    def _moved(self, end: dict[str, str], applied: int) -> None:
        self._positions.update(end)
        self.applied += applied

    def _wanted_item(self, item: Item) -> bool:
        if not _before(self.until.get(item.key, START), item.entry_id):
            if (item.key, item.entry_id) in self.errors:
                return True
            event = item.event
            if event is not None:
                if event.session_id in self.session_ids:
                    return True
                return isinstance(event, StatusUpdated) and event.message_id in self.messages
        return False

    def _wanted_raw(self, key: str, entry: Any) -> bool:
        entry_id, fields = entry
        if session_of(fields) in self.sessions:
            return True
        if self.message_bytes and len(fields) > 1 and fields[1] == _STATUS:
            if _field(fields, _MESSAGE) in self.message_bytes:
                return True
        return bool(self.errors) and (key, entry_id.decode()) in self.errors
