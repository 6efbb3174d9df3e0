"""The analytics read model: its rows from a known story, independence from how the streams
were interleaved, the checkpoint, a follower process killed mid-run, readers of the snapshot
in other processes, the promotion of a rebuilt file, bad entries, and a free event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import msgspec
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from projections.analytics import AnalyticsTarget, SnapshotMissing, open_snapshot
from projections.follower import Follower, Item, Moved, decode
from projections.report import FailureCount, Report, report
from tests.projections.following import caught_up
from tests.servers import OwnRedis
from tests.waiting import eventually
from zapstream.connections import open_redis
from zapstream.envelope import encode_fields
from zapstream.events import (
    Event,
    HandoffRequested,
    MessageReceived,
    ReplyFailed,
    ReplyGenerated,
    ReplySent,
    ReplySuperseded,
    StatusUpdated,
    TurnReady,
)
from zapstream.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
T = 1_767_351_600  # 2026-01-02 11:00:00 UTC, WhatsApp seconds
D2 = T + 86_400  # the next day


def key(stream: str) -> str:
    return f"zapstream:{{p0}}:{stream}"


def received(session: str, wamid: str, ts: int, kind: str = "text") -> MessageReceived:
    return MessageReceived(
        session_id=session,
        message_id=wamid,
        kind=kind,
        customer=session,
        phone_number_id="100000000000001",
        timestamp=ts,
        data="{}",
    )


def status(session: str, wamid: str, name: str, ts: int, data: str = "{}") -> StatusUpdated:
    return StatusUpdated(
        session_id=session,
        message_id=wamid,
        status=name,
        timestamp=ts,
        phone_number_id="100000000000001",
        customer=session,
        data=data,
    )


# (stream, the entry's time in ms, event): three sessions over two days.
STORY: list[tuple[str, int, Event]] = [
    ("messages", T * 1000 + 500, received("s1", "m1", T)),
    ("messages", T * 1000 + 1500, received("s1", "m2", T + 1, kind="image")),
    ("turns", T * 1000 + 3000, TurnReady(session_id="s1", turn_id="1", message_ids=["m1", "m2"])),
    (
        "replies",
        T * 1000 + 5000,
        ReplyGenerated(
            session_id="s1",
            turn_id="1",
            reply_id="s1:1",
            body="hello",
            tokens=50,
            message_ids=["m1", "m2"],
        ),
    ),
    (
        "replies",
        T * 1000 + 6000,
        ReplySent(
            session_id="s1", turn_id="1", reply_id="s1:1", message_id="o1", wamids=["o1", "o2"]
        ),
    ),
    ("statuses", T * 1000 + 7200, status("s1", "o1", "delivered", T + 7)),
    ("statuses", T * 1000 + 9300, status("s1", "o1", "read", T + 9)),
    ("messages", D2 * 1000 + 400, received("s2", "m3", D2)),
    ("turns", D2 * 1000 + 2000, TurnReady(session_id="s2", turn_id="1", message_ids=["m3"])),
    (
        "replies",
        D2 * 1000 + 3000,
        ReplySuperseded(session_id="s2", turn_id="1", reply_id="s2:1", tokens=30),
    ),
    ("messages", D2 * 1000 + 4500, received("s2", "m4", D2 + 4)),
    ("turns", D2 * 1000 + 6000, TurnReady(session_id="s2", turn_id="2", message_ids=["m4"])),
    (
        "replies",
        D2 * 1000 + 8000,
        ReplyGenerated(
            session_id="s2",
            turn_id="2",
            reply_id="s2:2",
            body="hi",
            tokens=40,
            message_ids=["m3", "m4"],
        ),
    ),
    (
        "replies",
        D2 * 1000 + 9000,
        ReplyFailed(session_id="s2", turn_id="2", reply_id="s2:2", code=131047, reason="window"),
    ),
    ("handoffs", D2 * 1000 + 10000, HandoffRequested(session_id="s2", turn_id="2")),
    ("messages", D2 * 1000 + 100_100, received("s3", "m5", D2 + 100)),
    ("turns", D2 * 1000 + 102_000, TurnReady(session_id="s3", turn_id="1", message_ids=["m5"])),
    (
        "replies",
        D2 * 1000 + 103_000,
        ReplyGenerated(
            session_id="s3", turn_id="1", reply_id="s3:1", body="yo", tokens=10, message_ids=[]
        ),
    ),
    (
        "replies",
        D2 * 1000 + 104_000,
        ReplySent(session_id="s3", turn_id="1", reply_id="s3:1", message_id="o3"),
    ),
    (
        "statuses",
        D2 * 1000 + 110_000,
        status("s3", "o3", "failed", D2 + 109, data='{"errors":[{"code":131026}]}'),
    ),
]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


DAY1, DAY2 = date(2026, 1, 2), date(2026, 1, 3)
# session, turn, messages, first message, ready, replied, generated, delivered, read, outcome,
# tokens, then seconds: ready, generate, send, response (first message answered to sent),
# delivered, read
# fmt: off
TURNS = [
    ("s1", "1", 2, at(T), at(T + 3), at(T + 6), at(T + 5), at(T + 7), at(T + 9), "sent", 50,
     3.0, 2.0, 1.0, 6.0, 1.0, 3.0),
    ("s2", "1", 1, at(D2), at(D2 + 2), None, None, None, None, "superseded", None,
     2.0, None, None, None, None, None),
    ("s2", "2", 1, at(D2 + 4), at(D2 + 6), None, at(D2 + 8), None, None, "failed", 40,
     2.0, 2.0, None, None, None, None),
    ("s3", "1", 1, at(D2 + 100), at(D2 + 102), at(D2 + 104), at(D2 + 103), None, None, "sent",
     10, 2.0, 1.0, 1.0, 4.0, None, None),
]
# fmt: on
EXPECTED = {
    "messages": [
        ("m1", "s1", "in", "text", at(T)),
        ("m2", "s1", "in", "image", at(T + 1)),
        ("m3", "s2", "in", "text", at(D2)),
        ("m4", "s2", "in", "text", at(D2 + 4)),
        ("m5", "s3", "in", "text", at(D2 + 100)),
        ("o1", "s1", "out", "text", at(T + 6)),
        ("o2", "s1", "out", "text", at(T + 6)),
        ("o3", "s3", "out", "text", at(D2 + 104)),
    ],
    "turns": TURNS,
    "daily_volume": [
        (DAY1, "in", "image", 1),
        (DAY1, "in", "text", 1),
        (DAY1, "out", "text", 2),
        (DAY2, "in", "text", 3),
        (DAY2, "out", "text", 1),
    ],
    "handoff_rate": [(3, 1, 1 / 3)],
    "superseded_replies": [("s2", "1", "s2:1", 30, at(D2 + 3))],
    "send_failures": [("delivery", 131026, 1), ("send", 131047, 1)],
}


async def append_story(redis: Redis, story: Sequence[tuple[str, int, Event]] = STORY) -> int:
    for stream, ms, event in story:
        await redis.xadd(key(stream), encode_fields(event), id=f"{ms}-0")  # type: ignore[arg-type]
    return len(story)


def item_of(stream_key: str, stream: str, entry_id: str, event: Event) -> Item:
    """The entry as a follower would read it from Redis."""
    fields = {k.encode(): v.encode() for k, v in encode_fields(event).items()}
    return decode(stream_key, stream, entry_id, fields)


def story_items() -> list[Item]:
    return [item_of(key(stream), stream, f"{ms}-0", event) for stream, ms, event in STORY]


async def apply_in_batches(target: AnalyticsTarget, batches: list[list[Item]]) -> None:
    positions: dict[str, str] = {}
    for batch in batches:
        start = {item.key: positions.get(item.key, "0-0") for item in batch}
        end = dict(start)
        for item in batch:
            end[item.key] = item.entry_id
        await target.apply(batch, start, end)
        positions.update(end)


async def snapshot_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    def read() -> list[tuple[object, ...]]:
        con = open_snapshot(path)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    return await asyncio.to_thread(read)


async def test_a_story_gives_its_rows_and_its_report(
    redis: Redis, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    """Latencies come from the log's times: WhatsApp's timestamps for messages and statuses,
    entry ids for what the pipeline appended."""
    await append_story(redis)
    path = tmp_path / "analytics.duckdb"
    target = AnalyticsTarget(path)
    await target.start()
    try:
        applied = await Follower(redis, make_topology(), target, batch=3).catch_up()
        assert applied == len(STORY)
        assert await target.read_all() == EXPECTED
    finally:
        await target.close()  # publishes the snapshot the report reads

    got = report(path)
    assert got.response_p95_s == pytest.approx(5.9)
    assert got.handoff_rate == pytest.approx(1 / 3)
    assert msgspec.structs.replace(got, response_p95_s=None, handoff_rate=None) == Report(
        as_of="2026-01-03T11:01:50.000Z",
        messages_in=5,
        messages_out=3,
        sessions=3,
        turns=4,
        replies_sent=2,
        response_median_s=5.0,
        response_p95_s=None,
        handoff_sessions=1,
        handoff_rate=None,
        superseded_replies=1,
        superseded_tokens=30,
        failures=[
            FailureCount(source="delivery", code=131026, failures=1),
            FailureCount(source="send", code=131047, failures=1),
        ],
    )


async def test_any_interleaving_of_the_streams_gives_the_same_model(tmp_path: Path) -> None:
    """Live following and replay land the streams in different orders (statuses before the
    reply.sent they name, turns before their messages): the model is the same."""
    items = story_items()
    by_stream = sorted(items, key=lambda item: item.stream)  # whole streams, one after another
    backwards = sorted(items, key=lambda item: item.stream, reverse=True)
    models = []
    for name, batches in [
        ("log-order", [items]),
        ("by-stream", [by_stream[:7], by_stream[7:]]),
        ("one-by-one-backwards", [[item] for item in backwards]),
    ]:
        target = AnalyticsTarget(tmp_path / f"{name}.duckdb")
        await target.start()
        await apply_in_batches(target, batches)
        models.append(await target.read_all())
        await target.close()
    assert models[0] == EXPECTED
    assert models[1] == models[0]
    assert models[2] == models[0]


async def test_a_batch_not_starting_at_the_checkpoint_is_refused(tmp_path: Path) -> None:
    items = story_items()[:2]
    messages = key("messages")
    target = AnalyticsTarget(tmp_path / "analytics.duckdb")
    await target.start()
    try:
        await target.apply(items, {messages: "0-0"}, {messages: items[-1].entry_id})
        with pytest.raises(Moved):  # applied already: never twice
            await target.apply(items, {messages: "0-0"}, {messages: items[-1].entry_id})
        with pytest.raises(Moved):  # a gap
            await target.apply(items, {messages: "1-0"}, {messages: "99999999999999-0"})
        assert await target.positions() == {messages: items[-1].entry_id}
        assert len((await target.read_all())["messages"]) == 2
    finally:
        await target.close()


async def test_a_replays_copy_commits_in_groups_and_a_failure_rolls_back_to_the_last(
    tmp_path: Path,
) -> None:
    # Group commit: a replay's copy commits every `commit_rows` rows; a batch refused (here a
    # gap: Moved) rolls back what was landed since the last commit, and the checkpoint says
    # so, so that the follower reads it again from there.
    messages = key("messages")
    one, two, three = [[item] for item in story_items() if item.key == messages][:3]
    copy = AnalyticsTarget(tmp_path / "analytics.duckdb.rebuild", rebuild=True, commit_rows=2)
    await copy.start()
    try:
        await copy.apply(one, {messages: "0-0"}, {messages: one[0].entry_id})  # open
        await copy.apply(two, {messages: one[0].entry_id}, {messages: two[0].entry_id})  # 2 rows
        await copy.apply(three, {messages: two[0].entry_id}, {messages: three[0].entry_id})
        assert await copy.positions() == {messages: three[0].entry_id}  # its own writes
        with pytest.raises(Moved):
            await copy.apply(three, {messages: "1-0"}, {messages: "99999999999999-0"})
        assert await copy.positions() == {messages: two[0].entry_id}  # the last commit
        await copy.apply(three, {messages: two[0].entry_id}, {messages: three[0].entry_id})
        landed = (await copy.read_all())["messages"]
        assert [row[0] for row in landed] == ["m1", "m2", "m3"]
    finally:
        await copy.close()


class FollowerProcess:
    """tests/projections/follow_process.py (analytics), started, killed, restarted."""

    def __init__(self, redis_url: str, path: Path, logs: Path) -> None:
        self.argv = [sys.executable, "-m", "tests.projections.follow_process", "analytics"]
        self.argv += [redis_url, str(path), "50"]
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> None:
        with (self.logs / f"follower-{self.started}.log").open("wb") as stderr:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, stderr=stderr)
        self.started += 1

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise


async def produce(redis: Redis, count: int, *, per_round: int = 40, prefix: str = "p") -> None:
    """`count` events over two streams, a round at a time: live traffic's pace."""
    for start in range(0, count, per_round):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + per_round, count)):
            if n % 4 == 3:
                event: Event = status(f"{prefix}{n % 50}", f"out.{prefix}{n}", "sent", T + n)
                pipe.xadd(key("statuses"), encode_fields(event))  # type: ignore[arg-type]
            else:
                event = received(f"{prefix}{n % 50}", f"in.{prefix}{n}", T + n)
                pipe.xadd(key("messages"), encode_fields(event))  # type: ignore[arg-type]
        await pipe.execute()
        await asyncio.sleep(0.005)  # the pace of traffic, not synchronisation


async def snapshot_count(path: Path) -> int:
    try:
        rows = await snapshot_rows(path, "SELECT count(*) FROM events")
    except SnapshotMissing:
        return 0
    count = rows[0][0]
    assert isinstance(count, int)
    return count


async def test_a_follower_process_killed_mid_run_doubles_and_misses_nothing(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "analytics.duckdb"
    follower = FollowerProcess(redis_url, path, tmp_path)
    total = 6000
    producing = asyncio.create_task(produce(redis, total))
    follower.start()
    try:
        seen = 0
        for _ in range(3):
            # Killed once it has applied more since the last restart, with traffic flowing.
            seen = await eventually(lambda s=seen: _more_than(path, s), timeout=30, interval=0.02)
            follower.kill()
            follower.start()
        await producing
        await eventually(lambda: _more_than(path, total - 1), timeout=60, interval=0.05)
    finally:
        producing.cancel()
        follower.stop()

    ids = {
        (key(stream), entry_id.decode())
        for stream in ("messages", "statuses")
        for entry_id, _ in await redis.xrange(key(stream))
    }
    assert len(ids) == total
    con = duckdb.connect(str(path), read_only=True)  # the follower has stopped
    try:
        landed = con.execute("SELECT stream_key, entry_id FROM events").fetchall()
        errors = con.execute("SELECT count(*) FROM projection_errors").fetchone()
    finally:
        con.close()
    assert len(landed) == total  # none doubled
    assert set(landed) == ids  # none missing
    assert errors == (0,)


async def _more_than(path: Path, count: int) -> int:
    now = await snapshot_count(path)
    return now if now > count else 0


async def test_report_reads_the_snapshot_from_another_process_while_the_follower_writes(
    redis: Redis, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    path = tmp_path / "analytics.duckdb"
    target = AnalyticsTarget(path, snapshot_every=0.05)
    await target.start()
    follower = Follower(redis, make_topology(), target, batch=100, block_ms=50)
    following = asyncio.create_task(follower.run())
    producing = asyncio.create_task(produce(redis, 1_000_000, per_round=50))  # until cancelled
    code = "import sys; from projections.report import report, to_json; "
    code += "sys.stdout.buffer.write(to_json(report(sys.argv[1])))"
    try:
        await eventually(lambda: _more_than(path, 0), timeout=30)
        counts = []
        for _ in range(5):
            began = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                code,
                str(path),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), timeout=30)
            assert process.returncode == 0, err.decode()
            assert time.monotonic() - began < 15  # never waits on the writer's lock
            counts.append(msgspec.json.decode(out, type=Report).messages_in)
        # Each reader saw a newer snapshot than the one before: the follower wrote meanwhile.
        assert counts == sorted(counts) and counts[-1] > counts[0] > 0
    finally:
        producing.cancel()
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await target.close()


async def rebuild(redis: Redis, topology: Topology, path: Path) -> AnalyticsTarget:
    shadow = AnalyticsTarget(path)
    await shadow.drop()
    await shadow.start()
    await Follower(redis, topology, shadow).catch_up()
    return shadow


async def test_a_live_follower_rides_out_a_redis_restart(
    own_redis: OwnRedis, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    # `zapstream project` used to exit on the first read that found Redis gone (the chaos run
    # saw it on every Redis restart): following pauses with backoff and goes on instead.
    topology = make_topology()
    live = AnalyticsTarget(tmp_path / "analytics.duckdb", snapshot_every=0.05)
    await live.start()
    async with open_redis(own_redis.url) as redis:
        follower = Follower(redis, topology, live, batch=5, block_ms=50)
        with capture_logs() as logs:
            following = asyncio.create_task(follower.run())
            try:
                await append_story(redis, STORY[:10])
                await eventually(lambda: caught_up(follower), timeout=30)
                own_redis.stop()  # SIGKILL; AOF with appendfsync always keeps every entry
                await eventually(
                    lambda: sum(e["event"] == "projection_retrying" for e in logs) >= 2,
                    timeout=20,
                )
                assert not following.done()
                own_redis.start()
                # The pool's connections from before the kill are dead: dropped, so that the
                # test's own calls below do not meet one (the follower's own calls retry).
                await redis.connection_pool.disconnect()
                await append_story(redis, STORY[10:])
                await eventually(lambda: caught_up(follower), timeout=30)
                assert not following.done()
                assert await live.read_all() == EXPECTED
            finally:
                follower.stop()
                await asyncio.wait_for(following, timeout=30)
                await live.close()


DERIVED_VIEWS = "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"


def _no_derived_views(path: Path) -> bool:
    con = open_snapshot(path)
    try:
        return not con.execute(DERIVED_VIEWS).fetchall()
    finally:
        con.close()


async def test_promote_hands_a_rebuilt_file_to_the_running_follower(
    redis: Redis, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = make_topology()
    live_path = tmp_path / "analytics.duckdb"
    live = AnalyticsTarget(live_path, snapshot_every=0.05)
    await live.start()
    follower = Follower(redis, topology, live, batch=5, block_ms=50)
    following = asyncio.create_task(follower.run())
    try:
        await append_story(redis, STORY[:10])
        await eventually(lambda: caught_up(follower), timeout=30)
        # Something only the live file has (on a stream the follower does not read): gone
        # once the rebuilt file is in.
        stray = received("stray", "m-stray", T)
        extra = item_of("extra", "messages", "1-0", stray)
        await live.apply([extra], {"extra": "0-0"}, {"extra": "1-0"})
        assert "extra" in await live.positions()
        inode = os.stat(live_path).st_ino

        shadow = await rebuild(redis, topology, tmp_path / "analytics.duckdb.rebuild")
        await shadow.promote(live_path)
        await shadow.close()  # spent: a no-op

        assert os.stat(live_path).st_ino != inode
        assert not (tmp_path / "analytics.duckdb.next").exists()
        assert not (tmp_path / "analytics.duckdb.rebuild").exists()
        # Readable at once: the promotion's snapshot has the derived relations as views, the
        # follower's next one as tables again, and a report reads the same from both.
        views = await snapshot_rows(live_path, DERIVED_VIEWS)
        from_views = report(live_path)
        assert ("turns",) in views
        await eventually(
            lambda: asyncio.to_thread(lambda: _no_derived_views(live_path)), timeout=30
        )
        assert report(live_path) == from_views
        # The live follower goes on over the rebuilt file, from its checkpoint.
        await append_story(redis, STORY[10:])
        await eventually(lambda: caught_up(follower), timeout=30)
        assert "extra" not in await live.positions()
        assert await live.read_all() == EXPECTED
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await live.close()
    landed = await snapshot_rows(live_path, "SELECT count(*), count(DISTINCT entry_id) FROM events")
    assert landed == [(len(STORY), len(STORY))]


async def test_promote_without_a_live_follower_swaps_the_file_itself(
    redis: Redis, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = make_topology()
    live_path = tmp_path / "analytics.duckdb"
    live = AnalyticsTarget(live_path)
    await live.start()
    await live.close()  # an empty live model, and nobody following

    await append_story(redis)
    shadow = await rebuild(redis, topology, tmp_path / "rebuilt.duckdb")
    await shadow.promote(live_path, timeout=10)
    await shadow.close()

    assert not (tmp_path / "analytics.duckdb.next").exists()
    assert await snapshot_rows(live_path, "SELECT count(*) FROM events") == [(len(STORY),)]
    live = AnalyticsTarget(live_path)
    await live.start()
    try:
        assert await live.read_all() == EXPECTED
        assert len(await live.positions()) == len(AnalyticsTarget.streams)
    finally:
        await live.close()


async def test_an_undecodable_entry_is_recorded_once_and_following_goes_on(
    redis: Redis, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = make_topology()
    path = tmp_path / "analytics.duckdb"
    await append_story(redis, STORY[:2])
    bad = await redis.xadd(
        key("messages"), {"type": "message.exploded", "v": "1"}, id=f"{T * 1000 + 1600}-0"
    )
    await append_story(redis, STORY[2:])
    for _ in range(2):  # a second follower over the same file records nothing again
        target = AnalyticsTarget(path)
        await target.start()
        follower = Follower(redis, topology, target, batch=4, block_ms=50)
        following = asyncio.create_task(follower.run())
        try:
            await eventually(lambda f=follower: caught_up(f), timeout=30)
            assert await target.read_all() == EXPECTED
        finally:
            follower.stop()
            await asyncio.wait_for(following, timeout=30)
            await target.close()
        errors = await snapshot_rows(path, "SELECT * FROM projection_errors")
        assert errors == [(key("messages"), bad.decode(), "unknown event type 'message.exploded'")]


async def test_duckdb_work_leaves_the_event_loop_free(tmp_path: Path) -> None:
    """A heartbeat on the loop keeps ticking while a large batch is applied and published."""
    messages = key("messages")
    items = [
        item_of(messages, "messages", f"{T * 1000 + n}-0", received(f"s{n % 300}", f"w{n}", T + n))
        for n in range(60_000)
    ]
    target = AnalyticsTarget(tmp_path / "analytics.duckdb")
    await target.start()
    gaps: list[float] = []
    beating = True

    async def heartbeat() -> None:
        last = time.monotonic()
        while beating:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        began = time.monotonic()
        await target.apply(items, {messages: "0-0"}, {messages: items[-1].entry_id})
        await target.publish()
        took = time.monotonic() - began
    finally:
        beating = False
        await beat
        await target.close()
    assert len(gaps) > 10
    assert max(gaps) < max(took / 3, 0.05), (max(gaps), took)


async def test_one_writer_per_file_the_second_waits_for_the_first(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    first, second = AnalyticsTarget(path), AnalyticsTarget(path)
    await first.start()
    await second.start()  # does not fail: its follower waits
    try:
        with pytest.raises(OSError) as busy:
            await second.positions()
        assert second.transient(busy.value)  # the follower backs off and asks again
        await first.close()
        assert await second.positions() == {}
    finally:
        await first.close()
        await second.close()


async def test_drop_deletes_the_file_and_what_goes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb.rebuild"
    target = AnalyticsTarget(path)
    await target.start()
    await apply_in_batches(target, [story_items()])
    await target.publish()
    await target.drop()
    await target.close()
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
