"""`replay --since TIME`: it rebuilds only the sessions the events since TIME touch, starting
from a copy of the live model, and the result equals a full replay, row by row, for both
read models. TIME falls in the middle of a seeded history; after it come statuses for
messages sent before it: one the only post-TIME event of its session, two naming no session
(as for a wamid the ingest could not place), of a touched session's message and of an
untouched one's, and one of a wamid nobody sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import msgspec
import pytest
from redis.asyncio import Redis

from projections.analytics import AnalyticsTarget, open_snapshot
from projections.analytics_files import hold_writer_lock, write_snapshot
from projections.follower import Follower
from projections.replay import live_target, replay
from tests.projections.following import caught_up, model_rows, same_rows
from tests.projections.history import START_TS, key, write_history
from tests.waiting import eventually
from zapstream.envelope import encode_fields
from zapstream.events import StatusUpdated
from zapstream.settings import Settings
from zapstream.topology import Topology

STREAMS = ("messages", "statuses", "turns", "replies", "handoffs", "operations")


class Log(msgspec.Struct, kw_only=True):
    """The log as written, and the sessions on either side of TIME."""

    entries: int  # every entry in the streams
    since: datetime  # TIME: the ms of the entry in the middle of the log
    untouched: list[str]  # sessions with no entry at or after TIME
    status_only: str  # a session whose one entry after TIME is a status (appended)
    inbound: dict[str, str]  # session -> one of its inbound wamids


def _seed() -> int:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    return seed


async def _entries(redis: Redis) -> list[tuple[int, int, dict[str, str]]]:
    """Every entry: (ms, seq, fields)."""
    found = []
    for stream in STREAMS:
        for entry_id, fields in await redis.xrange(key(stream)):
            ms, seq = entry_id.decode().split("-")
            text = {k.decode(): v.decode() for k, v in fields.items()}
            found.append((int(ms), int(seq), text))
    return sorted(found, key=lambda entry: (entry[0], entry[1]))


async def _write_log(redis: Redis, seed: int) -> Log:
    """The seeded history, TIME in its middle, then statuses after TIME for messages sent
    before it (see the module's doc)."""
    await write_history(redis, seed=seed, sessions=250, batch=200)
    entries = await _entries(redis)
    since_ms = entries[len(entries) // 2][0]
    if since_ms == entries[0][0]:
        since_ms += 1
    last: dict[str, int] = {}
    sent: dict[str, str] = {}
    inbound: dict[str, str] = {}
    for ms, _, fields in entries:
        session = fields.get("session_id", "")
        last[session] = max(last.get(session, 0), ms)
        if fields["type"] == "reply.sent":
            sent.setdefault(session, fields["message_id"])
        if fields["type"] == "message.received":
            inbound.setdefault(session, fields["message_id"])
    early = sorted(s for s, ms in last.items() if s and ms < since_ms and s in sent)
    assert len(early) > 10, "too few sessions end before TIME"
    status_only, unplaced = early[0], early[1]
    later = sorted(s for s, ms in last.items() if s and ms >= since_ms and s in sent)[0]
    # ... and a status of a wamid no reply.sent names (kept, of no session).
    named_and_not = ((status_only, status_only), (unplaced, ""), (later, ""), ("", ""))
    for session, named in named_and_not:
        status = StatusUpdated(
            session_id=named,
            message_id=sent.get(session, "wamid.OUT.never-sent"),
            status="played",  # counts as read: the message's status changes
            timestamp=START_TS + 10**6,
            phone_number_id="100000000000001",
            customer="551199999999",
            data="{}",
        )
        await redis.xadd(key("statuses"), encode_fields(status))  # type: ignore[arg-type]
    untouched = [s for s in early if s != status_only and s in inbound]
    return Log(
        entries=len(entries) + len(named_and_not),
        since=datetime.fromtimestamp(since_ms / 1000, tz=UTC),
        untouched=untouched,
        status_only=status_only,
        inbound=inbound,
    )


@pytest.mark.parametrize("name", ["sessions", "analytics"])
async def test_since_equals_a_full_replay_while_live_following_goes_on(
    name: str,
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    """Followed live, then --since TIME while the live follower goes on: the model it
    promotes is the followed one (which a full replay equals, test_replay.py), it applied
    fewer entries than the log holds, and a full replay after it gives the same rows."""
    seed = _seed()
    settings = make_settings(database_url=pg_url, duckdb_path=str(tmp_path / "analytics.duckdb"))
    topology = make_topology()
    live = live_target(name, settings)
    await live.start()
    follower = Follower(redis, topology, live, batch=97, block_ms=50)
    following = asyncio.create_task(follower.run())
    try:
        log = await _write_log(redis, seed)
        await eventually(lambda: caught_up(follower), timeout=60, interval=0.1)
        if isinstance(live, AnalyticsTarget):
            await live.publish()  # the snapshot a --since copy starts from
        followed = await model_rows(live)
        said: list[str] = []
        applied = await replay(
            redis, topology, settings, name, progress=False, since=log.since, say=said.append
        )
        assert 0 < applied < log.entries
        assert len(said) == 1 and " sessions touched since " in said[0], said
        await eventually(lambda: same_rows(live, followed), timeout=30, interval=0.1)
        # Live following goes on over the promoted model.
        more = await _write_more(redis)
        await eventually(lambda: caught_up(follower), timeout=30, interval=0.1)
        await eventually(lambda: _contains(live, more), timeout=30, interval=0.1)
        after = await model_rows(live)
        assert await replay(redis, topology, settings, name, progress=False) == log.entries + 1
        await eventually(lambda: same_rows(live, after), timeout=30, interval=0.1)
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await live.close()


async def _write_more(redis: Redis) -> str:
    """A status for a wamid nobody sent, after the replay: the live follower applies it."""
    wamid = "wamid.OUT.after-the-replay"
    status = StatusUpdated(
        session_id="",
        message_id=wamid,
        status="delivered",
        timestamp=START_TS + 2 * 10**6,
        phone_number_id="100000000000001",
        customer="551199999999",
        data="{}",
    )
    await redis.xadd(key("statuses"), encode_fields(status))  # type: ignore[arg-type]
    return wamid


async def _contains(target: Any, wamid: str) -> bool:
    if isinstance(target, AnalyticsTarget):
        await target.publish()
        path = target.path
        with open_snapshot(path) as snapshot:
            found = snapshot.execute(
                "SELECT count(*) FROM events WHERE message_id = ?", [wamid]
            ).fetchone()
        return bool(found and found[0])
    rows = await model_rows(target)
    return any(row[0] == wamid for row in rows["message_statuses"])


@pytest.mark.parametrize("name", ["sessions", "analytics"])
async def test_since_rebuilds_the_touched_sessions_only(
    name: str,
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    """A row of a touched session (touched by a status alone) and one of an untouched
    session are corrupted in the live model: --since recomputes the first from the log and
    copies the second as it is, and every other row equals a full replay's."""
    seed = _seed()
    settings = make_settings(database_url=pg_url, duckdb_path=str(tmp_path / "analytics.duckdb"))
    topology = make_topology()
    log = await _write_log(redis, seed)
    touched_wamid = log.inbound[log.status_only]
    untouched_wamid = log.inbound[random.Random(seed).choice(log.untouched)]
    live = live_target(name, settings)
    await live.start()
    try:
        assert await Follower(redis, topology, live, batch=500).catch_up() == log.entries
    finally:
        await live.close()  # analytics: publishes the snapshot --since starts from
    await _corrupt(name, settings, [touched_wamid, untouched_wamid])

    applied = await replay(redis, topology, settings, name, progress=False, since=log.since)
    assert 0 < applied < log.entries
    since = await _landed(name, settings)
    assert await replay(redis, topology, settings, name, progress=False) == log.entries
    full = await _landed(name, settings)

    corrupted = [row for rows in since.values() for row in rows if "corrupted" in row]
    assert corrupted and all(untouched_wamid in row for row in corrupted), corrupted
    assert not any("corrupted" in row for rows in full.values() for row in rows)
    assert any(
        touched_wamid in row for row in since["events" if name == "analytics" else "messages"]
    )
    assert _without(since, untouched_wamid) == _without(full, untouched_wamid)


async def _corrupt(name: str, settings: Settings, wamids: list[str]) -> None:
    """Overwrite what the live model holds of inbound messages `wamids`: PostgreSQL in place;
    DuckDB in the file, then published as the live writer publishes it."""
    if name == "sessions":
        connection = await asyncpg.connect(settings.database_url, timeout=5)
        try:
            done = await connection.execute(
                "UPDATE zapstream.messages SET body = 'corrupted' WHERE message_id = ANY($1)",
                wamids,
            )
        finally:
            await connection.close()
        assert done == f"UPDATE {len(wamids)}"
        return
    path = Path(settings.duckdb_path)
    con = duckdb.connect(str(path))
    try:
        found = con.execute(
            "UPDATE events SET kind = 'corrupted' WHERE type = 'message.received' "
            "AND list_contains($1, message_id)",
            [wamids],
        ).fetchone()
        assert found == (len(wamids),)
        write_snapshot(con, path, {})
    finally:
        con.close()


async def _landed(name: str, settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """The sessions model's tables; the analytics model's `events` and projection_errors
    (from its snapshot: a row's kind shows in several derived relations)."""
    if name == "sessions":
        target = live_target(name, settings)
        await target.start()
        try:
            return await model_rows(target)
        finally:
            await target.close()
    with open_snapshot(settings.duckdb_path) as snapshot:
        return {
            table: snapshot.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
            for table in ("events", "projection_errors")
        }


def _without(
    rows: dict[str, list[tuple[Any, ...]]], wamid: str
) -> dict[str, list[tuple[Any, ...]]]:
    return {table: [row for row in found if wamid not in row] for table, found in rows.items()}


@pytest.mark.parametrize("name", ["sessions", "analytics"])
async def test_since_without_a_live_model_is_a_full_replay(
    name: str,
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    """No live checkpoint (the model never ran, no snapshot published) to start from: every
    entry is applied, and the command says why."""
    settings = make_settings(database_url=pg_url, duckdb_path=str(tmp_path / "analytics.duckdb"))
    topology = make_topology()
    log = await _write_log(redis, _seed())
    said: list[str] = []
    applied = await replay(
        redis, topology, settings, name, progress=False, since=log.since, say=said.append
    )
    assert applied == log.entries
    assert said == [f"{name}: no live model to start from: a full replay"]
    assert any((await _landed(name, settings)).values())


@pytest.mark.parametrize("name", ["sessions", "analytics"])
async def test_an_interrupted_since_leaves_the_live_model_as_it_was(
    name: str,
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    """Ctrl-C (the task cancelled) while --since waits to promote its copy (held off here:
    PostgreSQL's schema lock taken, the DuckDB file's writer lock held): the copy is dropped
    and the live model is the one followed."""
    settings = make_settings(database_url=pg_url, duckdb_path=str(tmp_path / "analytics.duckdb"))
    topology = make_topology()
    log = await _write_log(redis, _seed())
    live = live_target(name, settings)
    await live.start()
    try:
        await Follower(redis, topology, live, batch=500).catch_up()
        followed = await model_rows(live)
    finally:
        await live.close()
    async with _promotion_held(name, settings) as waiting:
        replaying = asyncio.create_task(
            replay(redis, topology, settings, name, progress=False, since=log.since)
        )
        await eventually(waiting, timeout=60, interval=0.05)
        assert await _copy_left(name, settings)  # built, not yet swapped in
        replaying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(replaying, timeout=30)
    live = live_target(name, settings)
    await live.start()
    try:
        assert await model_rows(live) == followed
    finally:
        await live.close()
    assert not await _copy_left(name, settings)


async def _copy_left(name: str, settings: Settings) -> bool:
    """Whether a replay's copy is left: the rebuild schema, or the rebuild file."""
    if name == "analytics":
        return await asyncio.to_thread(Path(f"{settings.duckdb_path}.rebuild").exists)
    connection = await asyncpg.connect(settings.database_url, timeout=5)
    try:
        found = await connection.fetchval(
            "SELECT 1 FROM pg_namespace WHERE nspname = 'zapstream_rebuild'"
        )
    finally:
        await connection.close()
    return found is not None


@contextlib.asynccontextmanager
async def _promotion_held(
    name: str, settings: Settings
) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
    """Hold off promotion; yields a check: whether the replay waits to promote."""
    if name == "analytics":
        path = Path(settings.duckdb_path)
        lock = hold_writer_lock(path)  # as a live follower would: the replay waits for it
        try:

            async def marked() -> bool:
                return await asyncio.to_thread(Path(f"{path}.next").exists)

            yield marked
        finally:
            lock.close()
        return
    holder = await asyncpg.connect(settings.database_url, timeout=5)
    watcher = await asyncpg.connect(settings.database_url, timeout=5)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                "zapstream:schema:zapstream",
            )

            async def blocked() -> bool:
                found = await watcher.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                return bool(found)

            yield blocked
    finally:
        await holder.close()
        await watcher.close()
