"""The archive projection: every entry once in Parquet, across SIGKILLs; replay over the
archive and the streams after trimming; older event versions upcast when read back."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from redis.asyncio import Redis

from projections.archive import ArchiveTarget, read_checkpoint
from projections.follower import Follower
from projections.replay import live_target, replay
from projections.trim import trim
from tests.projections.history import key, write_history
from tests.waiting import eventually
from zapstream.envelope import encode_fields
from zapstream.events import MessageReceived, ReplySent
from zapstream.keys import projections_key, stream_keys
from zapstream.settings import Settings
from zapstream.topology import Topology

ROOT = Path(__file__).resolve().parents[2]


def _seed() -> int:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    return seed


def archived_ids(directory: Path) -> list[str]:
    """Every `<stream key> <entry id>` in the archive's Parquet files, as DuckDB reads them
    (duplicates kept)."""
    files = list(directory.glob("*/*/*.parquet"))
    if not files:
        return []
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT stream_key || ' ' || entry_id FROM read_parquet(?) "
            "ORDER BY stream_key, ms, seq",
            [str(directory / "*" / "*" / "*.parquet")],
        ).fetchall()
    return [row[0] for row in rows]


async def log_ids(redis: Redis, topology: Topology) -> list[str]:
    ids = []
    for stream in topology.streams:
        for stream_key in stream_keys(topology, stream):
            ids += [f"{stream_key} {i.decode()}" for i, _ in await redis.xrange(stream_key)]
    return ids


async def test_killed_archive_follower_loses_and_doubles_nothing(
    redis: Redis, redis_url: str, tmp_path: Path, make_topology: Callable[..., Topology]
) -> None:
    rng = random.Random(_seed())
    summary = await write_history(redis, seed=rng.randrange(1 << 32))
    directory = tmp_path / "archive"
    argv = [sys.executable, "-m", "tests.projections.follow_process", "archive", redis_url]
    argv.append(str(directory))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*argv, "37"], cwd=ROOT, stdout=subprocess.DEVNULL)

    def archived() -> int:
        extents = read_checkpoint(directory).extents
        return sum(extent.entries for extent in extents.values())

    process = start()
    try:
        for _ in range(3):  # killed at three random points, each mid-run
            threshold = archived() + rng.randrange(100, 900)
            await eventually(lambda t=threshold: archived() >= t, timeout=60)  # type: ignore[misc]
            process.kill()
            process.wait()
            process = start()
        await eventually(lambda: archived() == summary.events, timeout=60)
        # The checkpoint is mirrored into Redis just after each commit.
        last = (await redis.xrevrange(key("messages"), count=1))[0][0]
        await eventually(lambda: _mirrored(redis, make_topology(), last), timeout=30)
    finally:
        process.kill()
        process.wait()
    ids = archived_ids(directory)
    assert len(ids) == len(set(ids)) == summary.events
    assert sorted(ids) == sorted(await log_ids(redis, make_topology()))


async def _mirrored(redis: Redis, topology: Topology, last: bytes) -> bool:
    mirrors = await redis.hgetall(projections_key(topology))
    return bool(mirrors.get(f"archive:{key('messages')}".encode()) == last)


async def _follow(redis: Redis, topology: Topology, target: Any) -> None:
    await target.start()
    try:
        await Follower(redis, topology, target).catch_up()
    finally:
        await target.close()


async def _create_groups(redis: Redis, topology: Topology) -> None:
    """Every group of streams.yaml, created at the end: they have consumed everything."""
    for name, spec in topology.groups.items():
        for stream in spec.streams:
            for stream_key in stream_keys(topology, stream):
                await redis.xgroup_create(stream_key, name, id="$", mkstream=True)


def _retention_topology(make_topology: Callable[..., Topology]) -> Topology:
    base = make_topology()
    streams = {
        name: {"description": spec.description, "retention": {"max_len": 1}}
        for name, spec in base.streams.items()
    }
    return make_topology(streams=streams)


async def test_append_archive_trim_replay_gives_the_same_models(
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    topology = _retention_topology(make_topology)
    settings = make_settings(
        database_url=pg_url,
        duckdb_path=str(tmp_path / "analytics.duckdb"),
        archive_dir=str(tmp_path / "archive"),
    )
    summary = await write_history(redis, seed=_seed())
    # A reply.sent of version 1 (before `wamids`), as an archive of old times holds it.
    old = encode_fields(
        ReplySent(
            session_id="c9999-1",
            turn_id="1",
            reply_id="c9999-1:1",
            message_id="wamid.OLD.1",
            wamids=["ignored"],
        )
    )
    del old["wamids"]
    await redis.xadd(key("replies"), {**old, "v": "1"})  # type: ignore[arg-type]
    await redis.xadd(key("messages"), encode_fields(_message("c9999-1")))  # type: ignore[arg-type]
    before: dict[str, Any] = {}
    for name in ("sessions", "analytics"):
        target = live_target(name, settings)
        await _follow(redis, topology, target)
        await target.start()
        before[name] = await target.read_all()  # type: ignore[attr-defined]
        await target.close()
    await _follow(redis, topology, ArchiveTarget(settings.archive_dir, topology))
    await _create_groups(redis, topology)
    ids = []
    for stream in topology.streams:
        for k in stream_keys(topology, stream):
            ids.extend(entry_id.decode() for entry_id, _ in await redis.xrange(k))
    ids.sort(key=lambda entry_id: int(entry_id.split("-")[0]))
    middle = datetime.fromtimestamp(int(ids[len(ids) // 2].split("-")[0]) / 1000, tz=UTC)

    await trim(redis, topology)
    lengths = [await redis.xlen(k) for s in topology.streams for k in stream_keys(topology, s)]
    assert lengths == [1] * len(lengths)  # everything but the newest entry left Redis

    for name in ("sessions", "analytics"):
        applied = await replay(redis, topology, settings, name, progress=False)
        assert applied == summary.events + 2
        await _same_as(name, settings, before[name])
        # --since reads the archive too: for the sessions touched (every one since the
        # epoch: each entry is applied again) and for their entries. A time to come touches
        # nothing (and nothing is left to follow).
        for since, least, most in (
            (middle, 1, summary.events - 1),
            (EPOCH, summary.events + 2, summary.events + 2),
            (LATER, 0, 0),
        ):
            applied = await replay(redis, topology, settings, name, progress=False, since=since)
            assert least <= applied <= most, (since, applied)
            await _same_as(name, settings, before[name])
    sessions = live_target("sessions", settings)
    await sessions.start()
    try:
        messages = (await sessions.read_all())["messages"]  # type: ignore[attr-defined]
    finally:
        await sessions.close()
    assert any("wamid.OLD.1" in row for row in messages)  # the upcast v1 reply.sent


EPOCH = datetime.fromtimestamp(0, tz=UTC)
LATER = datetime(2100, 1, 1)  # no zone: UTC


async def _same_as(name: str, settings: Settings, expected: dict[str, Any]) -> None:
    target = live_target(name, settings)
    await target.start()
    try:
        assert await target.read_all() == expected  # type: ignore[attr-defined]
    finally:
        await target.close()


def _message(session: str) -> MessageReceived:
    return MessageReceived(
        session_id=session,
        message_id="wamid.IN.old",
        kind="text",
        from_="551100009999",
        customer="551100009999",
        phone_number_id="100000000000001",
        timestamp=1_795_000_000,
        data='{"type":"text","text":{"body":"old"}}',
    )
