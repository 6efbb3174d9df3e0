"""Live following and replay give the same models, row by row, for both read models: a
seeded history of a few thousand mixed events is followed live while it is written, then
replayed (twice) while the live follower goes on."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from projections.analytics import AnalyticsTarget, open_snapshot
from projections.follower import Follower
from projections.replay import live_target, replay
from tests.projections.following import caught_up, model_rows, same_rows
from tests.projections.history import key, write_history
from tests.waiting import eventually
from zapstream.envelope import encode_fields
from zapstream.events import MessageReceived, ReplyGenerated, ReplySent
from zapstream.settings import Settings
from zapstream.topology import Topology


@pytest.mark.parametrize("name", ["sessions", "analytics"])
async def test_live_and_replayed_models_are_equal_row_by_row(
    name: str,
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    settings = make_settings(database_url=pg_url, duckdb_path=str(tmp_path / "analytics.duckdb"))
    topology = make_topology()
    live = live_target(name, settings)
    await live.start()
    # Small batches: the live follower sees the streams interleaved as they are written.
    follower = Follower(redis, topology, live, batch=97, block_ms=50)
    following = asyncio.create_task(follower.run())
    try:
        summary = await write_history(redis, seed=seed, batch=200)
        assert summary.events > 3000
        await eventually(lambda: caught_up(follower), timeout=60, interval=0.1)
        followed = await model_rows(live)
        assert followed and any(followed.values())

        for _ in range(2):  # replayed twice: the same
            applied = await replay(redis, topology, settings, name, progress=False)
            assert applied == summary.events
            # The live follower goes on over the promoted model, from its checkpoint.
            await eventually(lambda: same_rows(live, followed), timeout=30, interval=0.1)
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await live.close()


def _odd_entries(rng: random.Random) -> list[tuple[str, dict[str, str]]]:
    """Entries a bulk load must leave to the per-entry way, or read with defaults: an older
    `v` (upcast), another writer's field order, a field holding the bulk separator, an
    unreadable type, an int not in plain decimal, an int no PostgreSQL int4 holds, and a
    reply.generated written before its last fields existed."""
    sent = encode_fields(
        ReplySent(session_id="c9999-1", turn_id="1", reply_id="c9999-1:1", message_id="w.OLD")
    )
    del sent["wamids"]
    generated = encode_fields(
        ReplyGenerated(session_id="c9999-1", turn_id="1", reply_id="c9999-1:1", body="hi")
    )
    message = encode_fields(
        MessageReceived(
            session_id="c9999-1",
            message_id="wamid.IN.odd",
            kind="text",
            from_="551100009999",
            customer="551100009999",
            phone_number_id="100000000000001",
            timestamp=1_795_000_000,
            data='{"type":"text","text":{"body":"a \\u001f b"}}',
        )
    )
    entries = [
        ("replies", {**sent, "v": "1"}),
        ("replies", dict(reversed(generated.items()))),
        ("messages", {**message, "name": "A \x1f B"}),
        ("messages", {"type": "message.exploded", "v": "1"}),
        ("messages", {**message, "message_id": "wamid.IN.zero", "timestamp": "01795000000"}),
        ("replies", {**generated, "reply_id": "c9999-1:2", "tokens": "99999999999"}),
        ("replies", {k: v for k, v in generated.items() if k not in ("received_ms",)}),
    ]
    rng.shuffle(entries)
    return entries


@pytest.mark.parametrize("name", ["sessions", "analytics"])
async def test_a_bulk_replay_equals_following_entry_by_entry(
    name: str,
    redis: Redis,
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    """A replay loads XRANGE replies in bulk, stream after stream; following reads entry by
    entry, the streams interleaved by chance (random batch sizes): the same rows, the odd
    entries included."""
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    rng = random.Random(seed)
    settings = make_settings(database_url=pg_url, duckdb_path=str(tmp_path / "analytics.duckdb"))
    topology = make_topology()
    summary = await write_history(redis, seed=seed, sessions=150, batch=rng.randint(50, 400))
    odd = _odd_entries(rng)
    for stream, fields in odd:
        await redis.xadd(key(stream), fields)  # type: ignore[arg-type]
    live = live_target(name, settings)
    await live.start()
    try:
        follower = Follower(redis, topology, live, batch=rng.randint(20, 300))
        assert await follower.catch_up() == summary.events + len(odd)
        followed = await _landed(live, settings)
        assert await replay(redis, topology, settings, name, progress=False) == follower.applied
        assert await _landed(live, settings) == followed
    finally:
        await live.close()
    assert followed["projection_errors"]  # message.exploded at least


async def _landed(target: Any, settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """model_rows(), and for analytics its `events` and `projection_errors` (from a snapshot)."""
    rows = await model_rows(target)
    if isinstance(target, AnalyticsTarget):
        await target.publish()
        with open_snapshot(settings.duckdb_path) as snapshot:
            for table in ("events", "projection_errors"):
                rows[table] = snapshot.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    return rows
