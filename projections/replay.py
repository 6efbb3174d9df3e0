"""Replay: rebuild a read model from the log while the live one goes on serving and following.

A replay builds a fresh copy of the model beside the live one (PostgreSQL: the schema
`<schema>_rebuild`; DuckDB: the file `<path>.rebuild`), follows the whole log into it with the
same Follower, then promotes it: PostgreSQL swaps the schemas in one transaction; DuckDB hands
the new file to the live follower (see analytics.py). The copy loads the streams in bulk,
XRANGE's replies as they are, parsed and projected set-based (analytics_bulk.py,
sessions_bulk.py): what live following makes of each entry, its per-entry code taking any entry
the bulk load cannot read as it is (an older version to upcast, say). Readers see the old model
or the new one, never half of one. The copy carries its own checkpoint, so the live follower,
finding the checkpoint moved under it, picks up from the promoted model's positions. Ctrl-C
before the promotion drops the copy and leaves the live model as it was. A replay only reads
the log: it never calls the AI, never sends, never appends.

A replay reads the archive first, then the streams after the last archived entry id (see
Follower.catch_up), so it sees the whole history also after trimming. While it runs it pins
trimming (`replay:<projection>:<key>` in the projections hash) at the archive's checkpoint of
its start, so that nothing between the archive it read and the streams is trimmed meanwhile.

`since` (a time) rebuilds only what the events since then touch (since.py): the copy starts
as a consistent copy of the live model (PostgreSQL: its tables and checkpoint, copied from one
snapshot; DuckDB: the last snapshot the live follower published, which carries its
checkpoint), the rows of the touched sessions are deleted from it and their entries applied
again from the whole history (archive, then streams) up to the copy's checkpoint, and from
there the copy follows the log and is promoted as a full replay's is. It equals a full replay
(for the sessions untouched since then, as long as the live model had them right) and costs a
read of the log plus the touched sessions' work, not a rebuild of every session. With no live
checkpoint to start from (the model never ran), it is a full replay.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO, cast

from redis.asyncio import Redis

from projections.analytics import AnalyticsTarget
from projections.archive import ArchiveTarget, archive_source, read_checkpoint
from projections.follower import START, BulkTarget, Follower, Source, Target
from projections.sessions import SessionsTarget
from projections.since import Reapply, touched_sessions
from zapstream.keys import projections_key, stream_keys
from zapstream.settings import Settings
from zapstream.topology import Topology

PROJECTIONS = ("sessions", "analytics")  # the read models: replayed
FOLLOWED = (*PROJECTIONS, "archive")  # what `project` follows; the archive is never replayed


def live_target(name: str, settings: Settings, topology: Topology | None = None) -> Target:
    if name == "sessions":
        return SessionsTarget(settings.database_url)
    if name == "analytics":
        return AnalyticsTarget(settings.duckdb_path)
    if name == "archive" and topology is not None:
        return ArchiveTarget(settings.archive_dir, topology)
    raise ValueError(f"unknown projection {name!r}")


def shadow_target(name: str, settings: Settings) -> SessionsTarget | AnalyticsTarget:
    """An empty copy of the model, beside the live one, for a replay to fill."""
    if name == "sessions":
        return SessionsTarget(settings.database_url, schema="zapstream_rebuild", bulk=True)
    if name == "analytics":
        return AnalyticsTarget(f"{settings.duckdb_path}.rebuild", rebuild=True)
    raise ValueError(f"unknown projection {name!r}")


class ProgressBar:
    """`sessions  [#####.....]  51%  12,345/24,000  8,100 ev/s  ETA 1s` on one line; a --since
    replay's adds the entries it re-applied of those it read (`applied`)."""

    def __init__(self, name: str, total: int, out: TextIO = sys.stderr) -> None:
        self.name = name
        self.applied: Callable[[], int] | None = None
        self.total = max(total, 1)
        self.done = 0
        self.out = out
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, applied: int) -> None:
        self.done += applied
        now = time.monotonic()
        if now - self.shown >= 0.2 or self.done >= self.total:
            self.shown = now
            self.draw(now)

    def draw(self, now: float, end: str = "") -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        share = min(1.0, self.done / self.total)
        left = (self.total - self.done) / rate if rate else 0.0
        bar = "#" * int(share * 30) + "." * (30 - int(share * 30))
        applied = f"  {self.applied():,} re-applied" if self.applied is not None else ""
        self.out.write(
            f"\r{self.name:<10} [{bar}] {share:4.0%}  {self.done:,}/{self.total:,}  "
            f"{rate:,.0f} ev/s  ETA {max(left, 0):.0f}s{applied}{end}"
        )
        self.out.flush()

    def finish(self) -> None:
        self.draw(time.monotonic(), end="\n")


async def replay(
    redis: Redis,
    topology: Topology,
    settings: Settings,
    name: str,
    *,
    progress: bool = True,
    since: datetime | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Rebuild projection `name` from the whole log and promote it; the entries applied. With
    `since`, only what the events since then touch (the module's doc): the entries applied
    are then the touched sessions' and those after the live checkpoint. `say` is told what
    a --since replay rebuilds."""
    shadow = shadow_target(name, settings)
    await shadow.drop()  # what an interrupted replay left behind (works before start)
    follower = Follower(redis, topology, shadow, mirror=False)
    archived = read_checkpoint(settings.archive_dir)
    keys = [key for stream in shadow.streams for key in stream_keys(topology, stream)]
    pins = {f"replay:{name}:{key}": archived.positions.get(key, START) for key in keys}
    await redis.hset(projections_key(topology), mapping=pins)  # type: ignore[arg-type]
    total = sum(archived.extents[key].entries for key in keys if key in archived.extents)
    for key in keys:
        total += int(await redis.xlen(key))
    source = archive_source(settings.archive_dir, topology)
    bar = ProgressBar(name, total) if progress else None
    try:
        if since is None:
            await shadow.start()
            applied = await follower.catch_up(progress=bar, before=source)
        else:
            applied = await _since(redis, shadow, follower, since, settings, source, bar, say)
        if bar is not None:
            bar.total = max(bar.done, 1)  # the archive and the streams overlap
            bar.finish()
        if isinstance(shadow, AnalyticsTarget):
            await shadow.promote(settings.duckdb_path)
        else:
            await shadow.promote()
    except BaseException:  # Ctrl-C included: the live model stays as it was
        await shadow.drop()
        raise
    finally:
        await redis.hdel(projections_key(topology), *pins)
        await shadow.close()
    return applied


async def _since(
    redis: Redis,
    shadow: SessionsTarget | AnalyticsTarget,
    follower: Follower,
    since: datetime,
    settings: Settings,
    source: Source,
    bar: ProgressBar | None,
    say: Callable[[str], None] | None,
) -> int:
    """A --since replay's copy, up to its promotion (since.py); the entries applied. `source`
    reads the archive, before the streams."""
    when = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    if isinstance(shadow, AnalyticsTarget):
        copied = await shadow.copy_snapshot(settings.duckdb_path)
        await shadow.start()
        checkpoint = await shadow.positions() if copied else {}
    else:
        await shadow.start()
        checkpoint = await shadow.copy_live()
    if not checkpoint:
        if say is not None:
            say(f"{shadow.name}: no live model to start from: a full replay")
        return await follower.catch_up(progress=bar, before=source)
    until = await follower.ends()  # what the copy follows to, and where touching ends
    touched = await touched_sessions(redis, int(when.timestamp() * 1000), until, source)
    applied = 0
    if not touched:
        if say is not None:
            say(
                f"{shadow.name}: no session touched since {when.isoformat()}: the live model "
                "is followed to the log's end and swapped in"
            )
    else:
        forgotten = await shadow.forget(touched)
        if say is not None:
            sessions = f"{len(touched):,} session{'' if len(touched) == 1 else 's'}"
            say(
                f"{shadow.name}: rebuilding {sessions} touched since {when.isoformat()} "
                f"(of {forgotten.sessions:,})"
            )
        positions = {key: checkpoint.get(key, START) for key in follower.stream_of}
        reapply = Reapply(cast(BulkTarget, shadow), touched, forgotten, positions)
        batch: int | None = getattr(shadow, "batch", None)
        reader = Follower(follower.redis, follower.topology, reapply, batch=batch, mirror=False)
        if bar is not None:
            bar.applied = lambda: reapply.applied
        await reader.catch_up(until=positions, progress=bar, before=source)
        applied = reapply.applied
    # From the copy's checkpoint on, every session: as a full replay does.
    return applied + await follower.catch_up(progress=bar, before=source, until=until)
