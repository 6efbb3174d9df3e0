"""dedup_append: append events unless already appended, with their sessions, atomically.

The dedup check, the session update and the XADD happen in one Lua script (append.lua), so
near-simultaneous redeliveries cannot both get in. The events of one call are grouped by hash
tag, one script call per tag, all pipelined in one round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from ingest.payload import Inbound
from zapstream.envelope import encode_fields
from zapstream.keys import conversation_id, conversation_record_key, partition_for, stream_key
from zapstream.scripts import Call, Script
from zapstream.topology import Topology

APPEND = Script(Path(__file__).with_name("append.lua"))

# A conversation record outlives its dedup window and session gap by this margin.
_RECORD_MARGIN_S = 3600


def dedup_field(dedup_id: str) -> bytes:
    """The dedup record's field: `d` and 8 bytes of BLAKE2b (9 bytes, not a 60-byte wamid)."""
    return b"d" + hashlib.blake2b(dedup_id.encode("utf-8"), digest_size=8).digest()


def outbound_field(wamid: str) -> bytes:
    """The field under which the sender records an outbound wamid's session."""
    return b"o" + hashlib.blake2b(wamid.encode("utf-8"), digest_size=8).digest()


_UNKNOWN_CONVERSATION = "-"
_json = msgspec.json.Encoder()


class Appended(msgspec.Struct, frozen=True, kw_only=True):
    entry_id: str
    session_id: str


def _script_call(topology: Topology, items: Sequence[Inbound], partition: int) -> Call:
    """append.lua's KEYS and ARGV for items that all belong to `partition`."""
    keys: list[str] = []
    args: list[Any] = [
        repr(float(topology.dedup.window)),
        repr(float(topology.sessions.gap)),
        int(max(topology.dedup.window, topology.sessions.gap)) + _RECORD_MARGIN_S,
        len(items),
    ]
    for item in items:
        conversation = item.conversation or _UNKNOWN_CONVERSATION
        keys.append(stream_key(topology, item.stream, partition))
        keys.append(conversation_record_key(topology, conversation, partition))
        flat: list[str] = []
        for name, value in encode_fields(item.event).items():
            flat += [name, value]
        args += [
            item.session,
            dedup_field(item.dedup_id),
            item.timestamp,
            conversation_id(conversation),
            outbound_field(item.outbound) if item.outbound else b"",
            _json.encode(flat),
        ]
    return keys, args


async def dedup_append(
    redis: Redis, topology: Topology, items: Sequence[Inbound]
) -> list[Appended | None]:
    """Append each item unless its dedup record is inside the window.

    Returns, in item order, where each was appended, or None for a duplicate. On an error some
    groups may already be appended; a retry appends the rest, each once.
    """
    if not items:
        return []
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        conversation = item.conversation or _UNKNOWN_CONVERSATION
        groups.setdefault(partition_for(conversation, topology.partitions), []).append(index)
    calls = [
        _script_call(topology, [items[i] for i in indexes], partition)
        for partition, indexes in groups.items()
    ]
    results = await APPEND.run_many(redis, calls)
    appended: list[Appended | None] = [None] * len(items)
    for indexes, result in zip(groups.values(), results, strict=True):
        for index, pair in zip(indexes, result, strict=True):
            if pair:
                entry_id, session_id = pair
                appended[index] = Appended(
                    entry_id=entry_id.decode(), session_id=session_id.decode()
                )
    return appended


class AppendBatcher:
    """Coalesces the appends of concurrent requests into shared script calls.

    A lone request is appended at once. Under load, while up to `max_in_flight` calls are
    out, the requests that arrive meanwhile wait and then go together, so the events of many
    POSTs share one round trip. The script handles events in order, so a duplicate within a
    batch is still caught. A caller that stops waiting (a timeout) may still see its events
    appended: Meta's retry then finds them already there.
    """

    def __init__(
        self, redis: Redis, topology: Topology, *, max_events: int = 256, max_in_flight: int = 2
    ) -> None:
        self.redis = redis
        self.topology = topology
        self.max_events = max_events
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[Sequence[Inbound], asyncio.Future[list[Appended | None]]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def append(self, items: Sequence[Inbound], timeout: float) -> list[Appended | None]:
        """As dedup_append; TimeoutError when the answer takes longer than `timeout` s."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Appended | None]] = loop.create_future()
        # A bare timer: cheaper than asyncio.timeout() on this path, taken by every POST.
        timer = loop.call_at(loop.time() + timeout, _expire, done)
        self._queue.append((items, done))
        if len(self._flushes) < self.max_in_flight:
            self._start_flush()
        try:
            return await done
        finally:
            timer.cancel()

    async def close(self) -> None:
        """Wait for the calls already sent."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _start_flush(self) -> None:
        batch: list[tuple[Sequence[Inbound], asyncio.Future[list[Appended | None]]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_events):
            items, done = self._queue.pop(0)
            if done.done():
                continue  # its caller gave up (timed out) before the call went out
            batch.append((items, done))
            size += len(items)
        if not batch:
            return
        task = asyncio.create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if self._queue and len(self._flushes) < self.max_in_flight:
            self._start_flush()

    async def _flush(
        self, batch: list[tuple[Sequence[Inbound], asyncio.Future[list[Appended | None]]]]
    ) -> None:
        everything = [item for items, _ in batch for item in items]
        try:
            async with asyncio.timeout(self.topology.webhook.append_timeout):
                results = await dedup_append(self.redis, self.topology, everything)
        except Exception as err:  # handed to each waiting caller, which answers 503
            for _, done in batch:
                if not done.done():
                    done.set_exception(err)
            return
        start = 0
        for items, done in batch:
            if not done.done():
                done.set_result(results[start : start + len(items)])
            start += len(items)


def _expire(done: asyncio.Future[list[Appended | None]]) -> None:
    if not done.done():
        done.set_exception(TimeoutError("the log did not answer in time"))
