"""Backup and restore as README's "Retention and backups" describes it: Redis's AOF directory
(after BGREWRITEAOF), then the archive directory, copied; restored into a fresh redis-server
and a fresh archive folder; a replay there gives the same models."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from projections.archive import ArchiveTarget
from projections.replay import live_target, replay
from projections.trim import trim
from tests.projections.history import write_history
from tests.projections.test_archive import _create_groups, _follow, _retention_topology
from tests.servers import OwnRedis
from tests.waiting import eventually
from zapstream.connections import open_redis
from zapstream.keys import stream_keys
from zapstream.settings import Settings
from zapstream.topology import Topology


async def _models(settings: Settings) -> dict[str, Any]:
    models = {}
    for name in ("sessions", "analytics"):
        target = live_target(name, settings)
        await target.start()
        try:
            models[name] = await target.read_all()  # type: ignore[attr-defined]
        finally:
            await target.close()
    return models


async def test_backup_restored_elsewhere_replays_to_equal_models(
    own_redis: OwnRedis,
    pg_url: str,
    pg: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
) -> None:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    topology = _retention_topology(make_topology)
    settings = make_settings(
        redis_url=own_redis.url,
        database_url=pg_url,
        duckdb_path=str(tmp_path / "live" / "analytics.duckdb"),
        archive_dir=str(tmp_path / "live" / "archive"),
    )
    (tmp_path / "live").mkdir()
    async with open_redis(own_redis.url) as redis:
        summary = await write_history(redis, seed=seed)
        for name in ("sessions", "analytics"):
            await _follow(redis, topology, live_target(name, settings))
        await _follow(redis, topology, ArchiveTarget(settings.archive_dir, topology))
        await _create_groups(redis, topology)
        await trim(redis, topology)  # most of the history is now only in the archive
        assert sum([await redis.xlen(k) for k in stream_keys(topology, "messages")]) == 1

        # The backup: Redis first (its AOF, compacted), then the archive. In this order an
        # entry trimmed after the Redis copy was archived before it, so the pair has no gap.
        await redis.bgrewriteaof()

        async def rewritten() -> bool:
            info = await redis.info("persistence")
            return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]

        await eventually(rewritten, timeout=30)
        backup = tmp_path / "backup"
        shutil.copytree(own_redis.directory / "appendonlydir", backup / "redis" / "appendonlydir")
        shutil.copytree(settings.archive_dir, backup / "archive")
    expected = await _models(settings)
    own_redis.stop()

    # The restore: a fresh redis-server on another port over the copied AOF, a fresh archive
    # folder, fresh databases.
    restored_dir = tmp_path / "restored"
    shutil.copytree(backup / "redis", restored_dir / "redis")
    shutil.copytree(backup / "archive", restored_dir / "archive")
    restored = OwnRedis(restored_dir / "redis")
    restored.start()
    try:
        elsewhere = make_settings(
            redis_url=restored.url,
            database_url=pg,
            duckdb_path=str(restored_dir / "analytics.duckdb"),
            archive_dir=str(restored_dir / "archive"),
        )
        async with open_redis(restored.url) as redis:
            for name in ("sessions", "analytics"):
                applied = await replay(redis, topology, elsewhere, name, progress=False)
                assert applied == summary.events
        assert await _models(elsewhere) == expected
    finally:
        restored.stop()
