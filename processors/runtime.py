"""The one consumer runtime every group uses.

A group is a plain async handler (groups.py) configured in streams.yaml. GroupRunner reads
its streams with XREADGROUP in priority order, runs up to `concurrency` handlers at once, and
settles each entry by the handler's outcome:

    return            done: the entry is acked (fenced: only while this consumer owns it)
    return ACKED      done, and the handler's own script acked the entry with its effect:
                      the runtime sends no ack of its own (one round trip less)
    raise Retry(s)    not done yet (waiting, not failing): tried again after s seconds
    raise Reject(r)   cannot ever succeed: dead-lettered now
    raise anything    a failure: retried after the group's backoff (or the exception's
                      `retry_after` seconds, when longer), dead-lettered at max_failures

Any number of runners, in any number of processes, may serve one group. Liveness and reclaim
are in liveness.py, failures and dead letters in deadletter.py.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from processors import liveness
from processors.deadletter import backoff_delay, record_failure
from zapstream.connections import is_cluster
from zapstream.envelope import Envelope, decode_entry
from zapstream.keys import failures_key, partition_of, stream_key
from zapstream.metrics import Metrics
from zapstream.scripts import Batch, Script
from zapstream.settings import Settings
from zapstream.topology import GroupSpec, Topology

log = structlog.get_logger()

ACK = Script(Path(__file__).with_name("ack.lua"))
FENCED = 0  # ack.lua's answer when another consumer owns the entry (1: acked, 2: settled)

# Every Redis call of the runtime is bounded; a blocking read by its BLOCK time plus this.
REDIS_TIMEOUT_S = 5.0
CLUSTER_POLL_S = 0.1  # a runner over several partitions of a Redis Cluster asks this often
ACK_RETRY_S = 0.5
# Redis gone (restarting, failing over): the reader asks again this often, and an entry whose
# failure could not be recorded is tried again after this long. The process rides it out.
REDIS_RETRY_S = 0.5
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


# A handler's return when its own script acked the entry (fenced, as ack.lua does).
ACKED: Final = "acked"


class Retry(Exception):
    """Not done yet: try again after `after` seconds. Not counted as a failure."""

    def __init__(self, after: float = 1.0, reason: str = "") -> None:
        super().__init__(reason or f"retry after {after:g}s")
        self.after = after


class Reject(Exception):
    """This entry can never succeed: dead-letter it now."""


class HandlerContext(msgspec.Struct, frozen=True, kw_only=True):
    """What every handler gets besides its delivery: the opened clients and configuration."""

    redis: Redis
    settings: Settings
    topology: Topology
    metrics: Metrics
    http: Any = None  # an httpx.AsyncClient where the group calls out (the handoff webhook)
    graph: Any = None  # the Cloud API client (graph.Graph) where the group sends
    responder: Any = None  # the Responder (responder.py) of the respond group


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One entry handed to a handler, with what fences its effects."""

    envelope: Envelope
    group: str
    consumer: str
    key: str  # the stream's Redis key (partition included)
    fields: dict[bytes, bytes]
    deliveries: int  # times Redis delivered it, this time included
    failures: int  # handler failures so far


Handler = Callable[[HandlerContext, Delivery], Coroutine[Any, Any, str | None]]
# A group's periodic work beside its entries (debounce closes due windows), given the group
# and the partitions the runner serves.
Tick = Callable[[HandlerContext, str, Sequence[int]], Awaitable[None]]
TICK_S = 0.05


def queue_ack(batch: Batch, ctx: HandlerContext, delivery: Delivery) -> None:
    """Queue the delivery's fenced ack (ack.lua) in a handler's batch, after its effects,
    so that effect and ack take one round trip; the handler then returns acked(answer)."""
    failures = failures_key(ctx.topology, delivery.group, partition_of(delivery.key))
    batch.script(
        ACK,
        [delivery.key, failures],
        [delivery.group, delivery.consumer, delivery.envelope.entry_id],
    )


def acked(answer: list[int]) -> str | None:
    """What a handler returns after queue_ack: ACKED, or None when another consumer owns the
    entry now (the runtime's own ack then counts it as fenced)."""
    return None if answer[0] == FENCED else ACKED


def _message_ids(event: Any) -> str:
    """The WhatsApp message(s) an event is about, for the log: its own wamid, or those of the
    customer's messages a turn or reply answers (comma-separated)."""
    return str(getattr(event, "message_id", "") or ",".join(getattr(event, "message_ids", ())))


class _Entry(msgspec.Struct, kw_only=True):
    key: str
    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    failures: int | None = None  # None: not known yet (read from Redis when redelivered)


class _Slot:
    """One worker: the handler call it awaits, and that call's deadline (0: none running)."""

    __slots__ = ("call", "deadline", "timed_out")

    def __init__(self) -> None:
        self.call: asyncio.Future[str | None] | None = None
        self.deadline = 0.0
        self.timed_out = False


class GroupRunner:
    """One consumer of one group in this process: read, dispatch, settle, stop cleanly.

    It serves the group's streams in `partitions` (default: all). `zapstream work` starts one
    runner per partition, so that every read names keys of one hash tag, as Redis Cluster
    requires; a runner over several partitions reads them all in one XREADGROUP, which a
    single Redis allows.
    """

    def __init__(
        self,
        ctx: HandlerContext,
        group: str,
        handler: Handler,
        *,
        tick: Tick | None = None,
        consumer: str | None = None,
        partitions: Sequence[int] | None = None,
    ) -> None:
        self.ctx = ctx
        self.group = group
        self.spec: GroupSpec = ctx.topology.groups[group]
        self.handler = handler
        self.tick = tick
        self.consumer = consumer or liveness.consumer_name()
        self.partitions = list(range(ctx.topology.partitions) if partitions is None else partitions)
        self._keys = {
            s: [stream_key(ctx.topology, s, p) for p in self.partitions] for s in self.spec.streams
        }
        self._one_tag_a_read = len(self.partitions) > 1 and is_cluster(ctx.redis)
        self._stream_of = {k: s for s, keys in self._keys.items() for k in keys}
        # Read and waiting for a worker; None tells an idle worker to stop.
        self._ready: asyncio.Queue[_Entry | None] = asyncio.Queue()
        self._waiting: list[tuple[float, int, _Entry]] = []  # retry heap: (due, seq, entry)
        self._seq = itertools.count()
        self._workers: list[asyncio.Task[None]] = []
        self._slots: list[_Slot] = []
        self._loop_ref: asyncio.AbstractEventLoop  # set when the runner starts
        self._busy = 0  # workers inside a handler
        self._holding: set[tuple[str, str]] = set()  # (key, entry id) held in memory
        self._wakeup = asyncio.Event()  # for the reader: a worker finished, a retry is due
        self._stopping = False  # read nothing new
        self._closing = False  # every worker is done: the acker sends what is left and returns
        self._acks: list[_Entry] = []  # handled; their fenced ack not yet sent
        self._ack_wakeup = asyncio.Event()
        self._seconds = ctx.metrics.handler_seconds.labels(group=group)

    # --- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Read nothing new; finish in-flight work within the grace period; leave the rest."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Serve the group until stop(); then finish in-flight work within the grace period."""
        await self._serve(until_idle=False, deadline=None)

    async def drain(self, timeout: float = 30.0) -> None:
        """Serve until the group holds nothing more (burst mode, for tests and replays)."""
        await self._serve(until_idle=True, deadline=time.monotonic() + timeout)

    # --- the loop -------------------------------------------------------------------------

    async def _serve(self, *, until_idle: bool, deadline: float | None) -> None:
        self._loop_ref = asyncio.get_running_loop()
        if not await self._join():
            return  # stopped before Redis answered: nothing was read
        background = [
            asyncio.create_task(self._heartbeat(), name=f"{self.group}-heartbeat"),
            asyncio.create_task(self._reclaim_loop(), name=f"{self.group}-reclaim"),
        ]
        acker = asyncio.create_task(self._ack_loop(), name=f"{self.group}-acks")
        # A fixed pool of workers, each taking ready entries one at a time: no task per entry.
        self._slots = [_Slot() for _ in range(self.spec.concurrency)]
        self._workers = [
            asyncio.create_task(self._worker(slot), name=f"{self.group}-worker-{n}")
            for n, slot in enumerate(self._slots)
        ]
        background.append(asyncio.create_task(self._watchdog(), name=f"{self.group}-watchdog"))
        if self.tick is not None:
            background.append(asyncio.create_task(self._ticker(), name=f"{self.group}-tick"))
        log.info("consumer_started", group=self.group, consumer=self.consumer)
        try:
            await self._loop(until_idle, deadline)
        finally:
            await self._shutdown(background, acker)

    async def _join(self) -> bool:
        """Create the group and beat once; while Redis cannot be reached (a worker started
        during an outage), wait for it as a running one does. False when stopped first."""
        while not self._stopping:
            try:
                await self._create_groups()
                await self._beat()
                return True
            except UNREACHABLE as err:
                log.warning(
                    "redis_unreachable", group=self.group, error=f"{type(err).__name__}: {err}"
                )
                await self._sleep(REDIS_RETRY_S)
        return False

    async def _loop(self, until_idle: bool, deadline: float | None) -> None:
        # Whether the last read found the streams drained: the next read then blocks at once
        # instead of first asking (and finding nothing) without blocking.
        drained = False
        while not self._stopping:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"group {self.group} still busy after its drain timeout")
            self._promote_due_retries()
            # Keep up to `batch` entries read ahead, and no more than a batch of acks unsent.
            ready = self._ready.qsize()
            want = self.spec.batch - ready
            full = ready >= self.spec.concurrency or len(self._acks) > self.spec.batch
            if want <= 0 or full:
                await self._sleep(self._next_due_in())
                continue
            entries = (
                [] if drained and not until_idle else await self._read_or_wait(want, block_ms=None)
            )
            if not entries:
                if until_idle:
                    if self._idle_here() and await self._group_is_idle():
                        return
                    await self._sleep(min(0.05, self._next_due_in()))
                    continue
                if self._ready.qsize() or self._busy >= self.spec.concurrency:
                    await self._sleep(self._next_due_in())
                    continue
                block = min(self.spec.block, self._next_due_in())
                entries = await self._read_or_wait(want, block_ms=max(1, int(block * 1000)))
            drained = len(entries) < want
            for entry in entries:
                self._ready.put_nowait(entry)

    def _take_ready(self) -> list[_Entry]:
        """Empty the ready queue; its entries stay pending in Redis."""
        taken = []
        while self._ready.qsize():
            entry = self._ready.get_nowait()
            if entry is not None:
                taken.append(entry)
        return taken

    def _idle_here(self) -> bool:
        return not (self._ready.qsize() or self._busy or self._waiting or self._acks)

    async def _worker(self, slot: _Slot) -> None:
        while not self._stopping:
            entry = await self._ready.get()
            if entry is None:
                return
            self._busy += 1
            try:
                await self._handle(entry, slot)
            except Exception as err:
                # _handle settles every outcome, unless Redis fails under it (reading or
                # recording the entry's failures): the entry, still held, is tried again.
                log.error("runtime_worker_error", error=f"{type(err).__name__}: {err}")
                self._schedule(entry, REDIS_RETRY_S)
            finally:
                self._busy -= 1
                if self._ready.qsize() < self.spec.concurrency:
                    self._wakeup.set()  # the reader may read more

    async def _sleep(self, seconds: float) -> None:
        """Until woken (a worker finished, entries came back) or `seconds` pass."""
        self._wakeup.clear()
        # A bare timer: the reader sleeps this way many times a second.
        timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()

    def _next_due_in(self) -> float:
        if not self._waiting:
            return self.spec.block
        return max(0.0, self._waiting[0][0] - time.monotonic())

    def _promote_due_retries(self) -> bool:
        now = time.monotonic()
        promoted = False
        while self._waiting and self._waiting[0][0] <= now:
            _, _, entry = heapq.heappop(self._waiting)
            self._ready.put_nowait(entry)
            promoted = True
        return promoted

    # --- Redis ----------------------------------------------------------------------------

    async def _create_groups(self) -> None:
        for keys in self._keys.values():
            for key in keys:
                try:
                    async with asyncio.timeout(REDIS_TIMEOUT_S):
                        # From the start of the log: nothing appended before the first worker
                        # ran is skipped.
                        await self.ctx.redis.xgroup_create(key, self.group, id="0", mkstream=True)
                except ResponseError as err:
                    if "BUSYGROUP" not in str(err):
                        raise

    async def _read(self, count: int, block_ms: int | None) -> list[_Entry]:
        """Up to `count` new entries, highest-priority stream first.

        XREADGROUP over several streams prefers none, so each stream is read on its own, in
        priority order; only when all are empty does one blocking read wait on all of them.
        On a Redis Cluster a command names keys of one hash tag: a runner over several
        partitions (work starts one per partition, so only tests and benches do this) reads
        them one by one and, instead of blocking, pauses up to CLUSTER_POLL_S.
        """
        redis = self.ctx.redis
        entries: list[_Entry] = []
        if block_ms is None:
            for keys in self._keys.values():
                for chunk in [[key] for key in keys] if self._one_tag_a_read else [keys]:
                    async with asyncio.timeout(REDIS_TIMEOUT_S):
                        reply = await redis.xreadgroup(
                            self.group,
                            self.consumer,
                            dict.fromkeys(chunk, ">"),
                            count=count - len(entries),
                        )
                    entries += self._entries(reply)
                    if len(entries) >= count:
                        return entries
            return entries
        if self._one_tag_a_read:
            entries = await self._read(count, None)
            if not entries:
                await self._sleep(min(block_ms / 1000, CLUSTER_POLL_S))
            return entries
        all_keys = [k for keys in self._keys.values() for k in keys]
        async with asyncio.timeout(REDIS_TIMEOUT_S + block_ms / 1000):
            reply = await redis.xreadgroup(
                self.group, self.consumer, dict.fromkeys(all_keys, ">"), count=count, block=block_ms
            )
        return self._entries(reply)

    async def _read_or_wait(self, count: int, block_ms: int | None) -> list[_Entry]:
        """_read(), or nothing after a pause when Redis cannot be reached (restarting, failing
        over): the loop asks again, so the process rides the outage out. Entries a lost reply
        delivered stay pending for this consumer, and the reclaim loop takes them back."""
        try:
            return await self._read(count, block_ms)
        except UNREACHABLE as err:
            log.warning("read_failed", group=self.group, error=f"{type(err).__name__}: {err}")
            await self._sleep(REDIS_RETRY_S)
            return []

    def _entries(self, reply: Any) -> list[_Entry]:
        entries = []
        for key, items in reply.items() if isinstance(reply, dict) else reply or []:
            text_key = key.decode() if isinstance(key, bytes) else key
            for entry_id, fields in items:
                entry = _Entry(
                    key=text_key,
                    stream=self._stream_of[text_key],
                    entry_id=entry_id.decode(),
                    fields=fields or {},
                    deliveries=1,
                )
                self._holding.add((text_key, entry.entry_id))
                entries.append(entry)
        return entries

    async def _group_is_idle(self) -> bool:
        """Nothing pending for anyone in the group (drain's end)."""
        for keys in self._keys.values():
            for key in keys:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    summary = await self.ctx.redis.xpending(key, self.group)
                if summary["pending"]:
                    return False
        return True

    # --- one entry ------------------------------------------------------------------------

    async def _handle(self, entry: _Entry, slot: _Slot) -> None:
        if entry.failures is None:
            entry.failures = 0
            if entry.deliveries > 1:  # a redelivery may have failed before
                at = failures_key(self.ctx.topology, self.group, partition_of(entry.key))
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    entry.failures = int(await self.ctx.redis.hget(at, entry.entry_id) or 0)
        try:
            envelope = decode_entry(entry.stream, entry.entry_id, entry.fields)
        except (ValueError, msgspec.ValidationError) as err:
            await self._fail(entry, f"undecodable entry: {err}", dead_now=True)
            return
        delivery = Delivery(
            envelope=envelope,
            group=self.group,
            consumer=self.consumer,
            key=entry.key,
            fields=entry.fields,
            deliveries=entry.deliveries,
            failures=entry.failures,
        )
        event = envelope.event
        # Each worker is a task with its own context: binding every id, every time, replaces
        # the previous entry's without a reset.
        structlog.contextvars.bind_contextvars(
            group=self.group,
            entry_id=entry.entry_id,
            session_id=event.session_id,
            message_id=_message_ids(event),
            turn_id=getattr(event, "turn_id", ""),
        )
        await self._run_handler(entry, delivery, slot)

    async def _run_handler(self, entry: _Entry, delivery: Delivery, slot: _Slot) -> None:
        metrics = self.ctx.metrics
        started = time.perf_counter()
        # The call runs as its own task so that the watchdog can cancel it alone; a worker
        # cancelled by a stop cancels the call it awaits.
        slot.timed_out = False
        slot.call = self._loop_ref.create_task(self.handler(self.ctx, delivery))
        slot.deadline = time.monotonic() + self.spec.timeout
        try:
            try:
                outcome = await slot.call
            finally:
                slot.deadline = 0.0
                slot.call = None
        except asyncio.CancelledError:
            if not slot.timed_out:
                raise  # a stop: the entry stays pending
            self._seconds.observe(time.perf_counter() - started)
            await self._fail(
                entry, f"TimeoutError: handler ran past {self.spec.timeout:g}s", dead_now=False
            )
        except Retry as retry:
            metrics.group("handler_retried", self.group).inc()
            log.debug("handler_retry", after=retry.after, reason=str(retry))
            self._schedule(entry, retry.after)
        except Reject as reject:
            await self._fail(entry, f"rejected: {reject}", dead_now=True)
        except Exception as err:  # the runtime alone catches broadly: every failure is counted
            self._seconds.observe(time.perf_counter() - started)
            at_least = float(getattr(err, "retry_after", 0.0) or 0.0)
            await self._fail(
                entry, f"{type(err).__name__}: {err}", dead_now=False, at_least=at_least
            )
        else:
            self._seconds.observe(time.perf_counter() - started)
            if outcome == ACKED and not entry.failures:
                # Acked by the handler's script. (After a failure the runtime's ack also
                # clears the entry's failure count: ack.lua answers "settled" and does.)
                self._holding.discard((entry.key, entry.entry_id))
                metrics.group("handler_done", self.group).inc()
                return
            # The ack goes out from the acker task with the acks of other entries finished
            # meanwhile: the worker moves on at once, and a stop cannot cut an ack half-way.
            self._acks.append(entry)
            self._ack_wakeup.set()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wakeup.wait()
            self._ack_wakeup.clear()
            if not await self._flush_acks():
                await asyncio.sleep(ACK_RETRY_S)  # Redis trouble: the entries stay pending
                self._ack_wakeup.set()
            elif self._closing and not self._acks:
                return

    async def _flush_acks(self) -> bool:
        """Send the queued acks, one script call per stream key; False if Redis failed."""
        batch, self._acks = self._acks, []
        if not batch:
            return True
        by_key: dict[str, list[_Entry]] = {}
        for entry in batch:
            by_key.setdefault(entry.key, []).append(entry)
        calls = [
            (
                [key, failures_key(self.ctx.topology, self.group, partition_of(key))],
                [self.group, self.consumer, *(entry.entry_id for entry in entries)],
            )
            for key, entries in by_key.items()
        ]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                results = await ACK.run_many(self.ctx.redis, calls)
        except Exception as err:  # still pending in Redis: these acks are tried again
            log.warning("ack_failed", error=f"{type(err).__name__}: {err}", entries=len(batch))
            self._acks[:0] = batch
            return False
        done = self.ctx.metrics.group("handler_done", self.group)
        for entries, outcomes in zip(by_key.values(), results, strict=True):
            for entry, outcome in zip(entries, outcomes, strict=True):
                self._holding.discard((entry.key, entry.entry_id))
                if outcome == FENCED:
                    self.ctx.metrics.group("handler_fenced", self.group).inc()
                    log.warning(
                        "ack_fenced",
                        entry_id=entry.entry_id,
                        reason="another consumer took this entry over",
                    )
                else:
                    done.inc()
        return True

    async def _fail(
        self, entry: _Entry, error: str, *, dead_now: bool, at_least: float = 0.0
    ) -> None:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            record = await asyncio.shield(
                record_failure(
                    self.ctx.redis,
                    self.ctx.topology,
                    group=self.group,
                    consumer=self.consumer,
                    key=entry.key,
                    stream=entry.stream,
                    entry_id=entry.entry_id,
                    fields=entry.fields,
                    error=error,
                    deliveries=entry.deliveries,
                    max_failures=0 if dead_now else self.spec.max_failures,
                )
            )
        metrics = self.ctx.metrics
        if record is None:
            self._holding.discard((entry.key, entry.entry_id))
            metrics.group("handler_fenced", self.group).inc()
            log.warning("failure_fenced", error=error)
            return
        metrics.group("handler_failed", self.group).inc()
        entry.failures = record.failures
        if record.dead_letter_id:
            self._holding.discard((entry.key, entry.entry_id))
            metrics.group("dead_lettered", self.group).inc()
            log.error(
                "dead_lettered",
                error=error,
                failures=record.failures,
                deliveries=entry.deliveries,
                dead_letter_id=record.dead_letter_id,
            )
            return
        delay = max(at_least, backoff_delay(self.spec.backoff, record.failures))
        log.warning("handler_failed", error=error, failures=record.failures, retry_in=delay)
        self._schedule(entry, delay)

    def _schedule(self, entry: _Entry, after: float) -> None:
        if self._stopping:
            return  # left pending: another consumer takes it over once this one has stopped
        heapq.heappush(self._waiting, (time.monotonic() + after, next(self._seq), entry))
        self._wakeup.set()

    # --- liveness -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = liveness.heartbeat_interval(self.spec)
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - last > self.spec.idle:
                # Silent for longer than idle (paused, starved): others may have taken our
                # entries. Those not yet started are dropped; the fence settles the rest.
                dropped = [entry for _, _, entry in self._waiting]
                dropped += self._take_ready()
                for entry in dropped:
                    self._holding.discard((entry.key, entry.entry_id))
                self._waiting.clear()
                log.warning("lease_lost", silent_for=round(now - last, 2), dropped=len(dropped))
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    await self._beat()
                last = time.monotonic()
            except Exception as err:  # keep beating: a Redis outage must not kill the loop
                log.warning("heartbeat_failed", error=f"{type(err).__name__}: {err}")

    async def _beat(self) -> None:
        await liveness.beat(
            self.ctx.redis, self.ctx.topology, self.group, self.consumer, self.spec, self.partitions
        )

    async def _ticker(self) -> None:
        assert self.tick is not None
        while True:
            await asyncio.sleep(TICK_S)
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                    await self.tick(self.ctx, self.group, self.partitions)
            except Exception as err:  # a failed tick is tried again at the next one
                log.warning("tick_failed", group=self.group, error=f"{type(err).__name__}: {err}")

    async def _watchdog(self) -> None:
        """Cancel handlers running past the group's timeout (one sweep, not a timer each)."""
        interval = min(1.0, max(0.05, self.spec.timeout / 10))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for slot in self._slots:
                if slot.deadline and now > slot.deadline and slot.call is not None:
                    slot.timed_out = slot.call.cancel()

    async def _reclaim_loop(self) -> None:
        interval = liveness.reclaim_interval(self.spec)
        keys = [k for keys in self._keys.values() for k in keys]
        while True:
            await asyncio.sleep(interval)
            if self._stopping:
                return
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                    claimed = await liveness.reclaim(
                        self.ctx.redis,
                        self.ctx.topology,
                        self.group,
                        self.consumer,
                        keys,
                        set(self._holding),
                    )
                    await liveness.forget_dead_consumers(
                        self.ctx.redis,
                        self.ctx.topology,
                        self.group,
                        self.consumer,
                        self.spec,
                        keys,
                    )
            except Exception as err:  # a failed pass is retried at the next interval
                log.warning("reclaim_failed", error=f"{type(err).__name__}: {err}")
                continue
            for item in claimed:
                self._holding.add((item.key, item.entry_id))
                self._ready.put_nowait(
                    _Entry(
                        key=item.key,
                        stream=self._stream_of[item.key],
                        entry_id=item.entry_id,
                        fields=item.fields,
                        deliveries=item.deliveries,
                    )
                )
            if claimed:
                self.ctx.metrics.group("reclaimed", self.group).inc(len(claimed))
                log.info("entries_reclaimed", group=self.group, count=len(claimed))
                self._wakeup.set()

    # --- stopping -------------------------------------------------------------------------

    async def _shutdown(
        self, background: list[asyncio.Task[None]], acker: asyncio.Task[None]
    ) -> None:
        self._stopping = True
        self._take_ready()  # not started: left pending, for other consumers
        for _ in self._workers:  # idle workers stop now; busy ones after their entry
            self._ready.put_nowait(None)
        _, late = await asyncio.wait(self._workers, timeout=self.spec.grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=REDIS_TIMEOUT_S)
            log.warning("grace_period_over", group=self.group, left_pending=len(late))
        # Finished handlers still get their ack: the acker returns once it has sent them.
        self._closing = True
        self._ack_wakeup.set()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                await asyncio.shield(acker)
        except TimeoutError:
            log.warning("acks_unsent", entries=len(self._acks))
        for task in [*background, acker]:
            task.cancel()
        # Bounded: whatever a background task waits on, a stop never hangs on it.
        await asyncio.wait([*background, acker], timeout=REDIS_TIMEOUT_S)
        keys = [k for keys in self._keys.values() for k in keys]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await liveness.release(
                    self.ctx.redis, self.ctx.topology, self.group, self.consumer, self.partitions
                )
                for key in keys:
                    await liveness.forget(
                        self.ctx.redis, self.ctx.topology, self.group, self.consumer, key
                    )
        except Exception as err:  # what is left stays pending: others take it over
            log.warning("release_failed", error=f"{type(err).__name__}: {err}")
        log.info(
            "consumer_stopped",
            group=self.group,
            consumer=self.consumer,
            left_pending=len(self._holding),
        )
