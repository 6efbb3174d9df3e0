"""A follower: reads the log into one read model, each entry applied once.

The read model (a Target: sessions.py, analytics.py) keeps its own checkpoint, one position
per stream key (partition included), and writes it in the same transaction as the rows a
batch of entries produces: a crash before the commit applies nothing, after it everything, so
an entry is applied once across crashes and restarts (the tracking-record pattern of
`eventsourcing`). The batch names the positions it starts from, and the target refuses it when
its checkpoint is elsewhere (Moved): a replay swapped the tables in, or another follower ran.

Failures: a transient one (the database is down, a lock) retries the same batch with backoff,
and nothing moves meanwhile. Any other one is the batch's content: the batch is applied entry
by entry, and an entry that fails on its own is recorded in `projection_errors` with its entry
id and reason, and skipped, so the follower never loops on it.

Followers read with XREAD from their positions, never with consumer groups: a read model is
rebuilt by reading the log again from the start, which a group's delivery state cannot do.

A replay's copy that loads entries in bulk (a target with `raw_batch`, see RawChunk) is
caught up another way: each stream key read to its end with XRANGE, one after the other (or
`raw_lanes` at once), and each reply handed to the target as hiredis returns it, with no Item
(and no Python object) per entry; the target parses and projects the chunk set-based, entries
it cannot read that way (an older `v` to upcast, say) through its per-entry path, in the same
transaction, which checks and moves the checkpoint of the chunk's key alone. A chunk it
cannot load in bulk at all is applied as Items, entry by entry when it must.

After every commit (and at start) the follower mirrors its positions into the Redis hash
`<prefix>:projections` (field `<projection>:<stream key>`), so that trimming knows what each
projection still needs even while its database is down. The mirror is written after the
commit, so it is never ahead of the checkpoint; a follower that dies between the two leaves
it behind, which only trims less.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Protocol, cast

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from zapstream.connections import is_cluster, sibling
from zapstream.envelope import decode_fields
from zapstream.events import Event
from zapstream.keys import partition_of, projections_key, stream_keys
from zapstream.topology import Topology

log = structlog.get_logger()

START = "0-0"  # the position before the first entry
# Every stream zapstream writes. A read model follows them all, even one it takes nothing
# from (`operations`), so that its checkpoint lets trimming pass there too.
LOG_STREAMS = ("messages", "statuses", "turns", "replies", "handoffs", "operations")
BATCH = 2000  # entries per read and per transaction
BLOCK_MS = 1000  # a follower caught up waits this long for new entries
CLUSTER_POLL_S = 0.1  # on a Redis Cluster (several hash tags), it asks again this often
DECODE_STEP = 200  # entries decoded between two chances for the event loop to serve others
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # after transient failures; the last repeats
REDIS_TIMEOUT_S = 10.0
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the log, as a target applies it."""

    key: str  # the stream's Redis key (partition included)
    stream: str  # the stream's name in streams.yaml
    entry_id: str
    event: Event | None  # None when the entry cannot be decoded (see `error`)
    error: str = ""
    # The entry's fields as text, for a target that stores them as they are (the archive).
    fields: dict[str, str] | None = None
    # What a target's own decoder (`decode_entry`) made of the entry instead of an Event
    # (analytics: its row as JSON); set only for an entry that decode() reads as well.
    data: str | None = None

    @property
    def at_ms(self) -> int:
        """When the entry was appended (its id's milliseconds): the log's own clock."""
        return int(self.entry_id.split("-", 1)[0])


class RawChunk(msgspec.Struct, frozen=True, kw_only=True):
    """Entries of one stream key, in id order, as hiredis returns XRANGE's reply."""

    key: str
    stream: str
    # [[entry id, [field, value, field, value, ...]], ...], all bytes: never converted, as
    # building a Python object per entry is what a bulk load avoids.
    entries: list[Any]

    @property
    def last_id(self) -> str:
        return str(self.entries[-1][0].decode())


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """An entry that cannot be applied: recorded in projection_errors, then skipped."""

    key: str
    entry_id: str
    reason: str


class Moved(Exception):
    """The target's checkpoint is not where the batch starts (a replay swapped it)."""


class Target(Protocol):
    """A read model: where events go, and where its checkpoint is kept."""

    name: ClassVar[str]

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams it reads (a class constant, or every stream for the archive)."""

    async def start(self) -> None:
        """Connect, create what is missing and migrate (safe from two processes at once)."""

    async def positions(self) -> dict[str, str]:
        """The checkpoint: stream key -> the last entry id applied (missing: none yet)."""

    async def apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure] = (),
    ) -> None:
        """In one transaction: check the checkpoint is `start` (else Moved), apply `items`,
        record `failures`, and move the checkpoint to `end`."""

    def transient(self, error: BaseException) -> bool:
        """Whether `error` may pass by itself (connection lost, lock timeout)."""

    async def close(self) -> None: ...


class BulkTarget(Target, Protocol):
    """A replay's copy that loads XRANGE replies as they are (analytics.py, sessions.py)."""

    raw_batch: int  # entries per XRANGE and per transaction
    # (and optionally raw_lanes: stream keys loaded at once, 1 when missing)

    async def apply_raw(self, chunk: RawChunk, start: dict[str, str], end: dict[str, str]) -> None:
        """apply() for a chunk: in one transaction, check the checkpoint is `start` (else
        Moved), project every entry of `chunk` (an undecodable one into projection_errors),
        and move the checkpoint to `end`. Raises ValueError for a chunk it cannot load in
        bulk (the follower then applies its entries as Items)."""


def decode(key: str, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Item:
    """The entry with its event decoded (and upcast); unreadable ones carry their error."""
    try:
        event = decode_fields(fields)
    except (ValueError, msgspec.ValidationError) as err:
        return Item(key=key, stream=stream, entry_id=entry_id, event=None, error=str(err))
    return Item(key=key, stream=stream, entry_id=entry_id, event=event)


def keep_fields(key: str, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Item:
    """The entry's text fields, undecoded: whatever its type and version."""
    text = {k.decode(): v.decode() for k, v in fields.items()}
    return Item(key=key, stream=stream, entry_id=entry_id, event=None, fields=text)


Decoder = Callable[[str, str, str, dict[bytes, bytes]], Item]  # key, stream, entry id, fields
Progress = Callable[[int], None]  # called with the entries just applied
# Entries read before the streams (the archive), in entry-id order per stream key.
Source = Callable[[dict[str, str]], AsyncIterator[list[Item]]]


class Follower:
    """Follows the log into one target, from the target's own checkpoint."""

    def __init__(
        self,
        redis: Redis,
        topology: Topology,
        target: Target,
        *,
        batch: int | None = None,
        block_ms: int = BLOCK_MS,
        mirror: bool = True,
    ) -> None:
        self.redis = redis
        self.topology = topology
        self.target = target
        self.mirror = mirror  # a replay's copy is not mirrored: it is not what trimming waits for
        # A target that stores entries as they are (the archive) sets `keeps_fields`; one
        # that reads entries its own (faster) way has a `decode_entry` like decode() (analytics).
        own: Decoder | None = getattr(target, "decode_entry", None)
        self.decode: Decoder = own or (
            keep_fields if getattr(target, "keeps_fields", False) else decode
        )
        # Entries per read and per transaction: `batch`, else the target's `batch` (a replay's
        # copy asks for larger ones: fewer commits), else BATCH.
        self.batch: int = batch if batch is not None else getattr(target, "batch", BATCH)
        self.block_ms = block_ms
        self.stream_of = {
            key: stream for stream in target.streams for key in stream_keys(topology, stream)
        }
        self.applied = 0  # entries applied (or recorded as failed) by this follower
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        """Follow live until stop(). While Redis cannot be reached (restarting, failing over)
        following pauses with backoff, then goes on from the target's checkpoint (a batch
        committed just before may have missed its mirror)."""
        positions: dict[str, str] | None = None
        attempt = 0
        while not self._stopping:
            try:
                if positions is None:
                    positions = await self._positions()
                items = await self._read(positions, self.block_ms)
                if items:
                    positions = await self._apply(items, positions)
                attempt = 0
            except REDIS_UNREACHABLE as err:
                positions = None
                await self._backoff(err, attempt)
                attempt += 1

    async def catch_up(
        self,
        until: dict[str, str] | None = None,
        progress: Progress | None = None,
        before: Source | None = None,
    ) -> int:
        """Apply everything up to `until` (default: the log's end now), reading `before` (the
        archive) first and dropping the entries it already gave; the entries applied."""
        until = until or await self.ends()
        positions = await self._positions()
        applied = 0
        if before is not None:
            async for batch in before(positions):
                items = [
                    item
                    for item in batch
                    if item.key in positions and _before(positions[item.key], item.entry_id)
                ]
                if items:
                    positions = await self._apply(items, positions)
                    applied += len(items)
                    if progress is not None:
                        progress(len(items))
        if getattr(self.target, "raw_batch", 0):
            bulk = cast(BulkTarget, self.target)
            return applied + await self._catch_up_raw(bulk, positions, until, progress)
        # The next batch is read (and decoded) while the target applies this one: the target
        # works in a thread of its own (DuckDB) or in its database (PostgreSQL). A batch read
        # ahead is used only when the batch before ends where it was read from (no Moved).
        items = await self._read_behind(positions, until)
        while items and not self._stopping:
            expected = dict(positions)
            for item in items:
                expected[item.key] = item.entry_id
            applying = asyncio.create_task(self._apply(items, positions))
            try:
                ahead = await self._read_behind(expected, until)
            except Exception:
                await applying  # the batch read is applied, as without reading ahead
                raise
            except BaseException:
                applying.cancel()
                raise
            positions = await applying
            applied += len(items)
            if progress is not None:
                progress(len(items))
            if positions != expected:
                ahead = await self._read_behind(positions, until)
            items = ahead
        return applied

    async def _catch_up_raw(
        self,
        target: BulkTarget,
        positions: dict[str, str],
        until: dict[str, str],
        progress: Progress | None,
    ) -> int:
        """catch_up() over the streams for a bulk target: each key read to `until` with
        XRANGE, the next chunk read while the target loads this one; a target with
        `raw_lanes` loads that many keys at once (the longest first), each lane taking the
        next key when done with one. A chunk's transaction names its own key only."""
        raw = _raw_client(self.redis)
        behind = [key for key, end in until.items() if _before(positions[key], end)]
        pending = iter(await self._longest_first(behind))  # shared by the lanes
        done = [0]

        async def lane() -> None:
            for key in pending:
                applied = await self._catch_up_key(
                    raw, target, key, positions[key], until[key], progress
                )
                done[0] += applied  # not `+= await`: that reads done[0] before awaiting

        lanes = [asyncio.create_task(lane()) for _ in range(getattr(target, "raw_lanes", 1))]
        try:
            await asyncio.gather(*lanes)  # the first failure as it is (no ExceptionGroup)
        except BaseException:
            for running in lanes:
                running.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            raise
        finally:
            await raw.aclose()
        return done[0]

    async def _catch_up_key(
        self,
        raw: Redis,
        target: BulkTarget,
        key: str,
        position: str,
        end: str,
        progress: Progress | None,
    ) -> int:
        applied = 0
        chunk = await self._xrange(raw, target, key, position, end)
        while chunk is not None and not self._stopping:
            applying = asyncio.create_task(self._apply_raw(target, chunk, position))
            try:
                ahead = await self._xrange(raw, target, key, chunk.last_id, end)
            except Exception:
                await applying  # the chunk read is applied, as without reading ahead
                raise
            except BaseException:
                applying.cancel()
                raise
            position = await applying
            applied += len(chunk.entries)
            if progress is not None:
                progress(len(chunk.entries))
            if position != chunk.last_id:  # Moved: read from where it is
                ahead = await self._xrange(raw, target, key, position, end)
            chunk = ahead
        return applied

    async def _longest_first(self, keys: list[str]) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.xlen(key)
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            lengths = dict(zip(keys, await pipe.execute(), strict=True))
        return sorted(keys, key=lambda key: -int(lengths[key]))

    async def _xrange(
        self, raw: Redis, target: BulkTarget, key: str, after: str, end: str
    ) -> RawChunk | None:
        """The entries of `key` after `after` up to `end` (at most raw_batch); None when none."""
        if not _before(after, end):
            return None
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            entries = await raw.xrange(key, min=f"({after}", max=end, count=target.raw_batch)
        if not entries:
            return None
        return RawChunk(key=key, stream=self.stream_of[key], entries=entries)

    async def _apply_raw(self, target: BulkTarget, chunk: RawChunk, position: str) -> str:
        """Load a chunk in bulk (retrying transient failures); its key's position after it. A
        chunk the target cannot load in bulk is applied as Items."""
        start, end = {chunk.key: position}, {chunk.key: chunk.last_id}
        attempt = 0
        while True:
            try:
                await target.apply_raw(chunk, start, end)
            except Moved:
                log.info("projection_moved", projection=target.name)
                return (await self._positions())[chunk.key]
            except Exception as err:
                if target.transient(err):
                    await self._backoff(err, attempt)
                    attempt += 1
                    continue
                log.warning("projection_bulk_failed", projection=target.name, error=explain(err))
                return (await self._apply(self._items(chunk), start))[chunk.key]
            self.applied += len(chunk.entries)
            await self._mirror(end)
            return chunk.last_id

    def _items(self, chunk: RawChunk) -> list[Item]:
        """A chunk's entries decoded one by one, as _read decodes XREAD's."""
        return [
            self.decode(chunk.key, chunk.stream, raw_id.decode(), entry_fields(fields))
            for raw_id, fields in chunk.entries
        ]

    async def _read_behind(self, positions: dict[str, str], until: dict[str, str]) -> list[Item]:
        """The next batch up to `until` from `positions` (none when every key is there)."""
        behind = {k: p for k, p in positions.items() if _before(p, until.get(k, START))}
        if not behind:
            return []
        return await self._read(behind, None, until)

    async def ends(self) -> dict[str, str]:
        """The last entry id of every stream the target reads (START when empty)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.stream_of:
            pipe.xrevrange(key, count=1)
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            found = await pipe.execute()
        return {
            key: (entries[0][0].decode() if entries else START)
            for key, entries in zip(self.stream_of, found, strict=True)
        }

    async def _positions(self) -> dict[str, str]:
        while True:
            try:
                stored = await self.target.positions()
            except Exception as err:
                if not self.target.transient(err):
                    raise
                await self._backoff(err, 0)
                continue
            positions = {key: stored.get(key, START) for key in self.stream_of}
            await self._mirror(positions)
            return positions

    async def _mirror(self, positions: dict[str, str]) -> None:
        if not self.mirror or not positions:
            return
        fields = {f"{self.target.name}:{key}": position for key, position in positions.items()}
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await self.redis.hset(projections_key(self.topology), mapping=fields)  # type: ignore[arg-type]

    async def _read(
        self, positions: dict[str, str], block_ms: int | None, until: dict[str, str] | None = None
    ) -> list[Item]:
        async with asyncio.timeout(REDIS_TIMEOUT_S + (block_ms or 0) / 1000):
            reply = await self._xread(positions, block_ms)
        items = []
        for raw_key, entries in reply or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            limit = until.get(key) if until else None
            if limit is not None and entries and not _before(limit, entries[-1][0].decode()):
                limit = None  # the whole reply is within `until`: no entry to check
            stream = self.stream_of[key]
            decode_entry = self.decode
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                if limit is not None and _before(limit, entry_id):
                    break
                items.append(decode_entry(key, stream, entry_id, fields or {}))
                if len(items) % DECODE_STEP == 0:
                    # Let the loop serve others (the webhook, in `zapstream run`) meanwhile.
                    await asyncio.sleep(0)
        return items

    async def _xread(self, positions: dict[str, str], block_ms: int | None) -> Any:
        """XREAD over every key. A Redis Cluster takes the keys of one hash tag a command: there
        each partition is read without blocking (pipelined, each to its node), and when all
        are empty the follower pauses up to CLUSTER_POLL_S instead of blocking."""
        if self.topology.partitions == 1 or not is_cluster(self.redis):
            return await self.redis.xread(
                positions,  # type: ignore[arg-type]
                count=self.batch,
                block=block_ms,
            )
        by_partition: dict[int, dict[str, str]] = {}
        for key, position in positions.items():
            by_partition.setdefault(partition_of(key), {})[key] = position
        pipe = self.redis.pipeline(transaction=False)
        for keys in by_partition.values():
            pipe.xread(keys, count=self.batch)  # type: ignore[arg-type]
        reply = [found for answer in await pipe.execute() for found in answer or []]
        if not reply and block_ms:
            await asyncio.sleep(min(block_ms / 1000, CLUSTER_POLL_S))
        return reply

    async def _apply(self, items: list[Item], positions: dict[str, str]) -> dict[str, str]:
        """Apply a batch (retrying transient failures); the positions after it."""
        end = dict(positions)
        for item in items:
            end[item.key] = item.entry_id
        attempt = 0
        while True:
            try:
                await self.target.apply(items, positions, end)
            except Moved:
                log.info("projection_moved", projection=self.target.name)
                return await self._positions()
            except Exception as err:
                if self.target.transient(err):
                    await self._backoff(err, attempt)
                    attempt += 1
                    continue
                end = await self._apply_one_by_one(items, positions, err)
                await self._mirror(end)
                return end
            self.applied += len(items)
            await self._mirror(end)
            return end

    async def _apply_one_by_one(
        self, items: list[Item], positions: dict[str, str], first: Exception
    ) -> dict[str, str]:
        log.warning("projection_batch_failed", projection=self.target.name, error=explain(first))
        for item in items:
            start = positions
            positions = {**positions, item.key: item.entry_id}
            attempt = 0
            while True:
                try:
                    if item.event is None and item.data is None:
                        failure = Failure(key=item.key, entry_id=item.entry_id, reason=item.error)
                        await self.target.apply([], start, positions, [failure])
                    else:
                        await self.target.apply([item], start, positions)
                    break
                except Moved:
                    return await self._positions()
                except Exception as err:
                    if self.target.transient(err):
                        await self._backoff(err, attempt)
                        attempt += 1
                        continue
                    failure = Failure(key=item.key, entry_id=item.entry_id, reason=explain(err))
                    log.error(
                        "projection_error",
                        projection=self.target.name,
                        entry_id=item.entry_id,
                        reason=failure.reason,
                    )
                    await self._record(start, positions, failure)
                    break
            self.applied += 1
        return positions

    async def _record(self, start: dict[str, str], end: dict[str, str], failure: Failure) -> None:
        attempt = 0
        while True:
            try:
                await self.target.apply([], start, end, [failure])
                return
            except Exception as err:
                if isinstance(err, Moved) or not self.target.transient(err):
                    raise
                await self._backoff(err, attempt)
                attempt += 1

    async def _backoff(self, err: BaseException, attempt: int) -> None:
        delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
        log.warning(
            "projection_retrying",
            projection=self.target.name,
            error=explain(err),
            retry_in=delay,
        )
        await asyncio.sleep(delay)


def _raw_client(redis: Redis) -> Redis:
    """A client of the same Redis whose XRANGE returns hiredis's reply untouched: redis-py
    would build a dict per entry (about a third of XRANGE's time), which a bulk load skips."""
    raw = sibling(redis)
    raw.set_response_callback("XRANGE", _reply_as_is)
    return raw


def _reply_as_is(response: Any, **kwargs: Any) -> Any:
    return response


def entry_fields(fields: list[bytes]) -> dict[bytes, bytes]:
    """A flat [field, value, ...] list as the dict redis-py makes of it (the last value of a
    repeated field wins)."""
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _before(a: str, b: str) -> bool:
    """Whether entry id `a` comes before entry id `b`."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) < (int(bms), int(bseq or 0))


def explain(err: BaseException) -> str:
    """An error as projection_errors and the logs record it."""
    return f"{type(err).__name__}: {err}"[:500]
