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

from projections.follower import Follower
from projections.replay import live_target, replay
from tests.projections.history import write_history
from tests.waiting import eventually
from zapstream.settings import Settings
from zapstream.topology import Topology


async def _caught_up(follower: Follower) -> bool:
    ends = await follower.ends()
    positions = await follower.target.positions()
    return all(positions.get(key, "0-0") == end for key, end in ends.items() if end != "0-0")


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
        await eventually(lambda: _caught_up(follower), timeout=60, interval=0.1)
        followed = await _rows(live)
        assert followed and any(followed.values())

        for _ in range(2):  # replayed twice: the same
            applied = await replay(redis, topology, settings, name, progress=False)
            assert applied == summary.events
            # The live follower goes on over the promoted model, from its checkpoint.
            await eventually(lambda: _same(live, followed), timeout=30, interval=0.1)
    finally:
        follower.stop()
        await asyncio.wait_for(following, timeout=30)
        await live.close()


async def _rows(target: Any) -> dict[str, list[tuple[Any, ...]]]:
    rows: dict[str, list[tuple[Any, ...]]] = await target.read_all()
    return rows


async def _same(target: Any, expected: dict[str, list[tuple[Any, ...]]]) -> bool:
    try:
        return await _rows(target) == expected
    except Exception:  # the model is being switched over: ask again
        return False
