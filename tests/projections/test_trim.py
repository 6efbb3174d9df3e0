"""Trimming never removes what a group or a projection still needs: a stopped projection
follower, a projection that never ran and a lagging group each pin their streams, and
`inspect` names who pins what."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from projections.archive import ArchiveTarget
from projections.follower import Follower
from projections.replay import live_target
from projections.trim import trim
from tests.projections.history import key, write_history
from tests.projections.test_archive import _create_groups, _follow, _retention_topology
from zapstream.inspect import read_inspection
from zapstream.settings import Settings
from zapstream.topology import Topology


def _seed() -> int:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    return seed


async def _ids(redis: Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(key(stream))]


async def _setup(
    redis: Redis,
    tmp_path: Path,
    pg_url: str,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> tuple[Topology, Settings]:
    topology = _retention_topology(make_topology)  # max_len 1: retention wants all but one
    settings = make_settings(
        database_url=pg_url,
        duckdb_path=str(tmp_path / "analytics.duckdb"),
        archive_dir=str(tmp_path / "archive"),
    )
    await write_history(redis, seed=_seed())
    await _follow(redis, topology, ArchiveTarget(settings.archive_dir, topology))
    await _follow(redis, topology, live_target("analytics", settings))
    await _create_groups(redis, topology)
    return topology, settings


async def test_a_projection_that_never_ran_pins_every_stream(
    redis: Redis,
    tmp_path: Path,
    pg_url: str,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    topology, settings = await _setup(redis, tmp_path, pg_url, make_settings, make_topology)
    before = await _ids(redis, "messages")
    plans = await trim(redis, topology)
    assert await _ids(redis, "messages") == before
    assert {plan.pinned_by for plan in plans} == {"projection sessions"}
    found = await read_inspection(redis, topology, settings.archive_dir)
    messages = next(view for view in found.streams if view.stream == "messages")
    assert messages.trim is not None and messages.trim.pinned == len(before) - 1
    assert messages.archive is not None and messages.archive.entries == len(before)


async def test_a_stopped_projection_follower_keeps_what_it_has_not_applied(
    redis: Redis,
    tmp_path: Path,
    pg_url: str,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    topology, settings = await _setup(redis, tmp_path, pg_url, make_settings, make_topology)
    ids = await _ids(redis, "messages")
    stopped_at = ids[len(ids) // 3]
    sessions = live_target("sessions", settings)
    await sessions.start()
    follower = Follower(redis, topology, sessions)
    ends = await follower.ends()
    # The follower applies a third of `messages` (and every other stream), then stops.
    await follower.catch_up(until={**ends, key("messages"): stopped_at})
    await sessions.close()  # its database may now be down: the mirror in Redis stays

    plans = await trim(redis, topology)
    assert await _ids(redis, "messages") == ids[len(ids) // 3 + 1 :]
    messages = next(plan for plan in plans if plan.stream == "messages")
    assert messages.pinned_by == "projection sessions"
    # The other streams it had fully applied are trimmed to their newest entry.
    assert await redis.xlen(key("turns")) == 1

    # Restarted, it goes on from its checkpoint and misses nothing.
    await sessions.start()
    try:
        await Follower(redis, topology, sessions).catch_up()
        positions = await sessions.positions()
    finally:
        await sessions.close()
    assert positions[key("messages")] == ids[-1]


async def test_a_lagging_group_keeps_its_pending_and_undelivered_entries(
    redis: Redis,
    tmp_path: Path,
    pg_url: str,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    topology, settings = await _setup(redis, tmp_path, pg_url, make_settings, make_topology)
    await _follow(redis, topology, live_target("sessions", settings))
    ids = await _ids(redis, "messages")
    # `debounce` is set back to the start, reads 100 entries and acks the first 40.
    await redis.xgroup_setid(key("messages"), "debounce", "0")
    read = await redis.xreadgroup("debounce", "c1", {key("messages"): ">"}, count=100)
    delivered = [entry_id.decode() for entry_id, _ in read[0][1]]
    await redis.xack(key("messages"), "debounce", *delivered[:40])

    plans = await trim(redis, topology)
    assert await _ids(redis, "messages") == ids[40:]  # its oldest pending entry stays
    messages = next(plan for plan in plans if plan.stream == "messages")
    assert messages.pinned_by == "group debounce (pending)"

    await redis.xack(key("messages"), "debounce", *delivered[40:])
    plans = await trim(redis, topology)
    assert await _ids(redis, "messages") == ids[100:]  # what it has not been delivered stays
    messages = next(plan for plan in plans if plan.stream == "messages")
    assert messages.pinned_by == "group debounce"
