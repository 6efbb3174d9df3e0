"""The sessions read model on a real PostgreSQL, fed by a real Redis log through the Follower."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis

from projections.follower import Failure, Follower, Item, Moved, decode
from projections.sessions import MIGRATIONS, SessionsTarget
from tests.projections.following import caught_up
from tests.projections.history import history
from tests.servers import OwnPostgres
from tests.waiting import eventually
from zapstream.envelope import encode_fields
from zapstream.events import (
    DeadLetterRequeued,
    Event,
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
from zapstream.keys import stream_keys
from zapstream.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
BUSINESS = "100000000000001"
ANN, BEN = "5511999990000", "5511888880000"
T0 = 1_795_000_000  # WhatsApp time (s) of the first message
T1 = T0 + 90_000  # more than a day later: a new session of the same customer
BASE_MS = 1_795_200_000_000  # the log's time of the first entry
OLD, NEW, OTHER = f"c1-{T0}", f"c1-{T1}", f"c2-{T1 + 50}"
STREAM_OF: dict[type[Event], str] = {
    MessageReceived: "messages",
    MessageRejected: "messages",
    StatusUpdated: "statuses",
    TurnReady: "turns",
    ReplyGenerated: "replies",
    ReplySent: "replies",
    ReplyFailed: "replies",
    ReplyBlocked: "replies",
    ReplySuperseded: "replies",
    HandoffRequested: "handoffs",
    HandoffReleased: "handoffs",
    DeadLetterRequeued: "operations",
}


def key(stream: str) -> str:
    return f"zapstream:{{p0}}:{stream}"


def text(session: str, wamid: str, body: str, ts: int, customer: str = ANN) -> MessageReceived:
    data = {"from": customer, "id": wamid, "timestamp": str(ts), "type": "text"}
    return MessageReceived(
        session_id=session,
        message_id=wamid,
        kind="text",
        from_=customer,
        customer=customer,
        phone_number_id=BUSINESS,
        timestamp=ts,
        data=msgspec.json.encode({**data, "text": {"body": body}}).decode(),
    )


def media(session: str, wamid: str, kind: str, part: dict[str, str], ts: int) -> MessageReceived:
    data = {"from": ANN, "id": wamid, "timestamp": str(ts), "type": kind, kind: part}
    return MessageReceived(
        session_id=session,
        message_id=wamid,
        kind=kind,
        from_=ANN,
        customer=ANN,
        phone_number_id=BUSINESS,
        timestamp=ts,
        data=msgspec.json.encode(data).decode(),
    )


def status(session: str, wamid: str, name: str, ts: int) -> StatusUpdated:
    return StatusUpdated(
        session_id=session,
        message_id=wamid,
        status=name,
        timestamp=ts,
        phone_number_id=BUSINESS,
        customer=ANN,
        data="{}",
    )


def turn(session: str, turn_id: str, wamids: list[str], customer: str = ANN) -> TurnReady:
    return TurnReady(
        session_id=session,
        turn_id=turn_id,
        message_ids=wamids,
        phone_number_id=BUSINESS,
        customer=customer,
    )


def generated(session: str, turn_id: str, body: str, tokens: int = 0) -> ReplyGenerated:
    return ReplyGenerated(
        session_id=session,
        turn_id=turn_id,
        reply_id=f"{session}:{turn_id}",
        body=body,
        tokens=tokens,
    )


def sent(session: str, turn_id: str, wamids: list[str], first: str = "") -> ReplySent:
    return ReplySent(
        session_id=session,
        turn_id=turn_id,
        reply_id=f"{session}:{turn_id}",
        message_id=first or wamids[0],
        wamids=wamids,
    )


def handoff(session: str, turn_id: str, requested: bool, customer: str = ANN) -> Event:
    cls = HandoffRequested if requested else HandoffReleased
    return cls(session_id=session, turn_id=turn_id, phone_number_id=BUSINESS, customer=customer)


# A small story, in the order the pipeline would append it. Ann's first session (OLD) is
# closed by her second (NEW), which a human holds; Ben's (OTHER) was held and released.
STORY: list[Event] = [
    text(OLD, "wamid.A1", "hello", T0),
    turn(OLD, "1", ["wamid.A1"]),
    generated(OLD, "1", "hi there"),
    ReplyBlocked(session_id=OLD, turn_id="1", reply_id=f"{OLD}:1", reason="window_closed"),
    text(NEW, "wamid.B1", "again", T1),
    media(NEW, "wamid.B2", "image", {"id": "m1", "caption": "look"}, T1 + 5),
    media(NEW, "wamid.B3", "reaction", {"message_id": "wamid.x", "emoji": "+"}, T1 + 6),
    status(NEW, "wamid.OUT1a", "delivered", T1 + 20),  # before its reply.sent
    turn(NEW, "1", ["wamid.B1", "wamid.B2"]),
    status(NEW, "wamid.OUT1a", "read", T1 + 30),  # before its reply.sent too
    generated(NEW, "1", "answer one", tokens=42),
    sent(NEW, "1", ["wamid.OUT1a", "wamid.OUT1b"]),  # index 11
    status(NEW, "wamid.OUT1a", "sent", T1 + 10),  # late: read stays read
    status(NEW, "wamid.OUT1b", "failed", T1 + 12),
    status(NEW, "wamid.OUT1b", "delivered", T1 + 13),  # after failed: failed stays
    text(NEW, "wamid.B4", "more", T1 + 100),
    turn(NEW, "2", ["wamid.B4"]),
    generated(NEW, "2", "answer two"),
    ReplyFailed(
        session_id=NEW, turn_id="2", reply_id=f"{NEW}:2", code=131026, reason="undeliverable"
    ),
    handoff(NEW, "2", requested=True),
    text(OTHER, "wamid.D1", "yo", T1 + 50, customer=BEN),
    turn(OTHER, "1", ["wamid.D1"], customer=BEN),
    generated(OTHER, "1", "hey"),
    sent(OTHER, "1", [], first="wamid.OUT2"),  # index 23: no wamids, message_id stands in
    status(OTHER, "wamid.OUT2", "played", T1 + 70),
    status(OTHER, "wamid.OUT2", "delivered", T1 + 60),
    handoff(OTHER, "1", requested=True, customer=BEN),
    handoff(OTHER, "1", requested=False, customer=BEN),
    text(OTHER, "wamid.D2", "still there?", T1 + 200, customer=BEN),
    turn(OTHER, "2", ["wamid.D2"], customer=BEN),
    ReplySuperseded(session_id=OTHER, turn_id="2", reply_id=f"{OTHER}:2"),
    MessageRejected(session_id=OTHER, message_id="raw:1", raw="{}", reason="no type"),
]


def entry_id(n: int) -> str:
    return f"{BASE_MS + 1000 * n}-0"


def log_time(n: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=BASE_MS + 1000 * n)


def wa_time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


async def append(redis: Redis, events: Sequence[Event], first: int = 0) -> list[str]:
    """Append with explicit ids (event n at BASE_MS + n s): the same log whatever the order
    of appends across streams, as long as each stream's own order is kept."""
    pipe = redis.pipeline(transaction=False)
    ids = [entry_id(first + n) for n in range(len(events))]
    for event, id_ in zip(events, ids, strict=True):
        pipe.xadd(key(STREAM_OF[type(event)]), encode_fields(event), id=id_)  # type: ignore[arg-type]
    await pipe.execute()
    return ids


async def replayed(pg_url: str, schema: str, redis: Redis, topology: Topology) -> Any:
    """A fresh model of the whole log in `schema`, followed in one pass."""
    target = SessionsTarget(pg_url, schema=schema)
    await target.start()
    try:
        await Follower(redis, topology, target).catch_up()
        return await target.read_all()
    finally:
        await target.close()


async def fetch(target: SessionsTarget, sql: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(target.database_url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


class Watched:
    """A target that counts the transient errors and the Moved it met."""

    name: ClassVar[str] = SessionsTarget.name
    streams: ClassVar[tuple[str, ...]] = SessionsTarget.streams

    def __init__(self, target: SessionsTarget) -> None:
        self.target = target
        self.transients = 0
        self.moved = 0

    async def start(self) -> None:
        await self.target.start()

    async def positions(self) -> dict[str, str]:
        return await self.target.positions()

    async def apply(
        self,
        items: Sequence[Item],
        start: dict[str, str],
        end: dict[str, str],
        failures: Sequence[Failure] = (),
    ) -> None:
        try:
            await self.target.apply(items, start, end, failures)
        except Moved:
            self.moved += 1
            raise

    def transient(self, error: BaseException) -> bool:
        found = self.target.transient(error)
        self.transients += found
        return found

    async def close(self) -> None:
        await self.target.close()


@pytest.fixture
def topology(make_topology: Callable[..., Topology]) -> Topology:
    return make_topology()


async def test_a_session_story_projects_the_contract_columns(
    redis: Redis, pg: str, topology: Topology
) -> None:
    await append(redis, STORY)
    target = SessionsTarget(pg)
    await target.start()
    try:
        follower = Follower(redis, topology, target, batch=5)
        assert await follower.catch_up() == len(STORY)
        rows = await target.read_all()
        positions = await target.positions()
    finally:
        await target.close()

    assert rows["sessions"] == [
        (OLD, ANN, ANN, BUSINESS, "closed", wa_time(T0), wa_time(T0), 1),
        (NEW, ANN, ANN, BUSINESS, "handoff", wa_time(T1), wa_time(T1 + 100), 2),
        (OTHER, BEN, BEN, BUSINESS, "active", wa_time(T1 + 50), wa_time(T1 + 200), 2),
    ]
    messages = {row[0]: row[1:] for row in rows["messages"]}
    assert messages == {
        "wamid.A1": (OLD, "in", "text", "hello", wa_time(T0), "received", "1", None),
        "wamid.B1": (NEW, "in", "text", "again", wa_time(T1), "received", "1", None),
        "wamid.B2": (NEW, "in", "image", "look", wa_time(T1 + 5), "received", "1", None),
        "wamid.B3": (NEW, "in", "reaction", "", wa_time(T1 + 6), "received", None, None),
        "wamid.B4": (NEW, "in", "text", "more", wa_time(T1 + 100), "received", "2", None),
        "wamid.D1": (OTHER, "in", "text", "yo", wa_time(T1 + 50), "received", "1", None),
        "wamid.D2": (
            OTHER,
            "in",
            "text",
            "still there?",
            wa_time(T1 + 200),
            "received",
            "2",
            None,
        ),
        # Each part carries its reply's body; statuses arrived before and out of order.
        "wamid.OUT1a": (NEW, "out", "text", "answer one", log_time(11), "read", "1", f"{NEW}:1"),
        "wamid.OUT1b": (
            NEW,
            "out",
            "text",
            "answer one",
            log_time(11),
            "failed",
            "1",
            f"{NEW}:1",
        ),
        "wamid.OUT2": (OTHER, "out", "text", "hey", log_time(23), "read", "1", f"{OTHER}:1"),
    }
    assert rows["turns"] == [
        (OLD, "1", 1, log_time(1), "blocked", None),
        (NEW, "1", 2, log_time(8), "sent", log_time(11)),
        (NEW, "2", 1, log_time(16), "failed", None),
        (OTHER, "1", 1, log_time(21), "sent", log_time(23)),
        (OTHER, "2", 1, log_time(29), "superseded", None),
    ]
    replies = {row[0]: row[1:] for row in rows["replies"]}
    assert replies[f"{NEW}:1"] == (
        NEW, "1", "answer one", 42, log_time(10), "sent", log_time(11), None, ""
    )  # fmt: skip
    assert replies[f"{NEW}:2"][5:] == ("failed", log_time(18), 131026, "undeliverable")
    assert replies[f"{OLD}:1"][5:] == ("blocked", log_time(3), None, "window_closed")
    assert replies[f"{OTHER}:2"] == (
        OTHER,
        "2",
        None,
        None,
        None,
        "superseded",
        log_time(30),
        None,
        "",
    )
    assert rows["handoffs"] == [
        (NEW, entry_id(19), "requested", "2", log_time(19)),
        (OTHER, entry_id(26), "requested", "1", log_time(26)),
        (OTHER, entry_id(27), "released", "1", log_time(27)),
    ]
    assert ("wamid.OUT1b", "failed", wa_time(T1 + 12)) in rows["message_statuses"]
    assert rows["projection_errors"] == []
    # The ignored message.rejected moved the checkpoint too: it is the last entry.
    assert positions[key("messages")] == entry_id(len(STORY) - 1)


async def apply_shuffled(
    target: SessionsTarget, redis: Redis, topology: Topology, rng: random.Random
) -> None:
    """Apply the log in a random interleaving across stream keys, in batches of random
    sizes whose items are shuffled too (each key's entries keep their order of positions)."""
    per_key: dict[str, list[Item]] = {}
    for stream in target.streams:
        for k in stream_keys(topology, stream):
            entries: Any = await redis.xrange(k)
            per_key[k] = [decode(k, stream, i.decode(), fields) for i, fields in entries]
    positions = {k: "0-0" for k in per_key}
    while any(per_key.values()):
        batch: list[Item] = []
        for _ in range(rng.randint(1, 40)):
            left = [k for k, items in per_key.items() if items]
            if not left:
                break
            batch.append(per_key[rng.choice(left)].pop(0))
        end = dict(positions)
        for item in batch:
            end[item.key] = item.entry_id
        rng.shuffle(batch)
        await target.apply(batch, positions, end)
        positions = end


async def test_any_interleaving_across_streams_gives_the_same_rows(
    redis: Redis, pg: str, topology: Topology
) -> None:
    """Replay and live following read the streams interleaved differently: one stream at a
    time, one entry of each at a time, or at random; the rows are the same."""
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    events = STORY + list(history(random.Random(seed), 40))
    await append(redis, events)
    models = []
    for schema, batch in [("zapstream", 5000), ("one_by_one", 1)]:
        target = SessionsTarget(pg, schema=schema)
        await target.start()
        try:
            await Follower(redis, topology, target, batch=batch).catch_up()
            models.append(await target.read_all())
        finally:
            await target.close()
    shuffled = SessionsTarget(pg, schema="shuffled")
    await shuffled.start()
    try:
        await apply_shuffled(shuffled, redis, topology, random.Random(seed))
        models.append(await shuffled.read_all())
    finally:
        await shuffled.close()

    assert len(models[0]["messages"]) > 100 and models[0]["projection_errors"] == []
    assert models[1] == models[0]
    assert models[2] == models[0]


async def test_a_batch_from_another_position_is_refused(pg: str) -> None:
    target = SessionsTarget(pg)
    await target.start()
    event = text(NEW, "wamid.B1", "again", T1)
    item = Item(key="k", stream="messages", entry_id="5-0", event=event)
    try:
        await target.apply([item], {"k": "0-0"}, {"k": "5-0"})
        with pytest.raises(Moved):  # applied already: the checkpoint is past it
            await target.apply([item], {"k": "0-0"}, {"k": "5-0"})
        with pytest.raises(Moved):  # a key with no checkpoint yet is at 0-0
            await target.apply([], {"k": "5-0", "other": "3-0"}, {"k": "6-0", "other": "4-0"})
        with pytest.raises(ValueError, match="backwards"):
            await target.apply([], {"k": "5-0"}, {"k": "4-0"})
        await target.apply([], {"k": "5-0"}, {"k": "6-0"})  # an empty batch moves it too
        assert await target.positions() == {"k": "6-0"}
        assert len((await target.read_all())["messages"]) == 1
    finally:
        await target.close()


async def test_migrations_started_at_once_apply_once(pg: str) -> None:
    """Four starts at once on a missing database: it is created, each migration runs once."""
    targets = [SessionsTarget(pg) for _ in range(4)]
    try:
        await asyncio.gather(*(t.start() for t in targets))
        await targets[0].start()  # again: nothing left to do
        applied = await fetch(targets[0], "SELECT version, name FROM zapstream.schema_migrations")
    finally:
        for t in targets:
            await t.close()
    files = sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    assert sorted(f"{v:03d}_{n}.sql" for v, n in applied) == files


def test_transient_errors_are_the_passing_kind() -> None:
    target = SessionsTarget("postgresql://postgres@127.0.0.1:1/none")
    for error in [
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
        asyncpg.exceptions.CannotConnectNowError("starting up"),
        asyncpg.exceptions.AdminShutdownError("shutting down"),
        asyncpg.exceptions.LockNotAvailableError("lock timeout"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock"),
        asyncpg.exceptions.SerializationError("serialization"),
    ]:
        assert target.transient(error), error
    # A connection lost mid-transaction: its rollback fails too, and raises while handling it.
    rollback = asyncpg.exceptions.InterfaceError("the underlying connection is closed")
    rollback.__context__ = asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation")
    assert target.transient(rollback)
    for error in [
        ValueError(),
        Moved(),
        asyncpg.exceptions.CharacterNotInRepertoireError("0x00"),
        asyncpg.exceptions.UndefinedTableError("no table"),
    ]:
        assert not target.transient(error), error


async def test_a_bad_entry_is_recorded_once_and_following_goes_on(
    redis: Redis, pg: str, topology: Topology
) -> None:
    bad_body = text(NEW, "wamid.NUL", "nul \x00 byte", T1 + 1)  # PostgreSQL text refuses NUL
    ids = await append(redis, [text(NEW, "wamid.B1", "again", T1), bad_body])
    unreadable = await redis.xadd(key("messages"), {"type": "message.received", "v": "1"})
    target = SessionsTarget(pg)
    await target.start()
    follower = Follower(redis, topology, target, batch=100, block_ms=50)
    following = asyncio.create_task(follower.run())
    try:
        await eventually(lambda: caught_up(follower), timeout=20)
        await append(redis, [turn(NEW, "1", ["wamid.B1", "wamid.NUL"])], first=10)
        await eventually(lambda: caught_up(follower), timeout=20)
        rows = await target.read_all()
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=10)
        await target.close()

    errors = {(k, e): reason for k, e, reason in rows["projection_errors"]}
    assert list(errors) == [(key("messages"), ids[1]), (key("messages"), unreadable.decode())]
    assert "CharacterNotInRepertoire" in errors[key("messages"), ids[1]]
    assert "missing required field" in errors[key("messages"), unreadable.decode()]
    assert [row[0] for row in rows["messages"]] == ["wamid.B1"]
    assert rows["sessions"][0][-1] == 1  # the turn after the bad entries was applied


async def test_following_survives_postgres_stopping_and_catches_up(
    redis: Redis, own_pg: OwnPostgres, topology: Topology
) -> None:
    events = list(history(random.Random(11), 60))
    half = len(events) // 2
    target = Watched(SessionsTarget(own_pg.url))
    await target.start()
    follower = Follower(redis, topology, target, batch=50, block_ms=50)
    following = asyncio.create_task(follower.run())
    try:
        await append(redis, events[:half])
        await eventually(lambda: caught_up(follower), timeout=20)
        await append(redis, events[half:], first=half)
        own_pg.stop("immediate")  # most likely while a batch is in flight
        applied = follower.applied
        # Retried with backoff, nothing moved, the follower alive.
        await eventually(lambda: target.transients >= 3, timeout=20)
        assert not following.done() and follower.applied == applied
        own_pg.start()
        await eventually(lambda: caught_up(follower), timeout=30, interval=0.1)
        followed = await target.target.read_all()
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await target.close()

    assert followed == await replayed(own_pg.url, "fresh", redis, topology)
    assert len(followed["messages"]) > 100


async def test_promoting_a_replayed_copy_moves_the_live_follower_over(
    redis: Redis, pg: str, topology: Topology
) -> None:
    """The live follower's cached statements then name the promoted tables; it finds its
    checkpoint moved, reloads it and goes on."""
    events = list(history(random.Random(5), 60))
    third = len(events) // 3
    live = Watched(SessionsTarget(pg))
    await live.start()
    follower = Follower(redis, topology, live, batch=40, block_ms=50)
    following = asyncio.create_task(follower.run())
    try:
        await append(redis, events[:third])
        await eventually(lambda: caught_up(follower), timeout=20)
        shadow = SessionsTarget(pg, schema="zapstream_rebuild")
        await shadow.drop()  # works before start
        await shadow.start()
        await Follower(redis, topology, shadow).catch_up()
        # The live model moves on meanwhile: the copy's checkpoint is behind it.
        await append(redis, events[third : 2 * third], first=third)
        await eventually(lambda: caught_up(follower), timeout=20)
        await shadow.promote()
        await shadow.close()
        await append(redis, events[2 * third :], first=2 * third)
        await eventually(lambda: caught_up(follower), timeout=20)
        followed = await live.target.read_all()
        schemas = await fetch(
            live.target, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'zapstream%'"
        )
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await live.close()

    assert live.moved >= 1
    assert schemas == [("zapstream",)]
    assert followed == await replayed(pg, "fresh", redis, topology)


async def test_dropping_a_copy_leaves_the_live_model(
    redis: Redis, pg: str, topology: Topology
) -> None:
    await SessionsTarget(pg, schema="zapstream_rebuild").drop()  # no database yet: nothing
    await append(redis, STORY)
    live = SessionsTarget(pg)
    await live.start()
    shadow = SessionsTarget(pg, schema="zapstream_rebuild")
    await shadow.start()
    try:
        await Follower(redis, topology, live).catch_up()
        await Follower(redis, topology, shadow).catch_up()
        await shadow.drop()
        rows = await live.read_all()
        schemas = await fetch(
            live, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'zapstream%'"
        )
    finally:
        await shadow.close()
        await live.close()
    assert schemas == [("zapstream",)]
    assert len(rows["sessions"]) == 3
    with pytest.raises(ValueError):
        await live.promote()


async def test_a_follower_process_killed_mid_batch_applies_each_entry_once(
    redis: Redis, redis_url: str, pg: str, topology: Topology
) -> None:
    events = list(history(random.Random(3), 250))
    await append(redis, events)
    wamids = {e.message_id for e in events if isinstance(e, MessageReceived)}
    target = SessionsTarget(pg)
    await target.start()  # the processes then only find it migrated
    follower = Follower(redis, topology, target)
    argv = [sys.executable, "-m", "tests.projections.follow_process", "sessions", redis_url, pg]
    argv.append("40")

    async def moved_from(before: dict[str, str]) -> bool:
        now = await target.positions()
        return now != before and not await caught_up(follower)

    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stderr=asyncio.subprocess.DEVNULL
        )

    try:
        for _ in range(3):
            before = await target.positions()
            process = await spawn()
            try:
                await eventually(lambda b=before: moved_from(b), timeout=30, interval=0.005)
            finally:
                process.send_signal(signal.SIGKILL)  # no grace: mid-batch, mid-transaction
                await asyncio.wait_for(process.wait(), timeout=10)
        assert not await caught_up(follower)
        process = await spawn()
        try:
            await eventually(lambda: caught_up(follower), timeout=60, interval=0.1)
        finally:
            process.kill()
            await asyncio.wait_for(process.wait(), timeout=10)
        followed = await target.read_all()
    finally:
        await target.close()

    assert {row[0] for row in followed["messages"] if row[2] == "in"} == wamids
    assert followed["projection_errors"] == []
    assert followed == await replayed(pg, "fresh", redis, topology)
