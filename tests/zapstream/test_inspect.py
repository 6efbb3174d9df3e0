"""`zapstream inspect` against a scenario built with real worker processes: a lagging group,
entries held by a killed consumer, dead letters, a deletion in the stream. Its figures must
equal what the raw Redis commands say at that moment; its ages and idle times must lie within
the time that passed between the two raw reads around it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from tests.processors.recording import Options, append, topology
from tests.processors.workers import Workers
from tests.waiting import eventually
from zapstream.connections import text
from zapstream.groupstats import count_after
from zapstream.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
WORK = "zapstream:{p0}:work"
ENTRIES = 20


def scenario_topology() -> Topology:
    return topology(
        {
            # Holds two entries (one in its handler, one read ahead), then is killed.
            "held": {"streams": ["work"], "concurrency": 1, "batch": 1, "idle": "1s"},
            # Dead-letters t3 and t4 (Reject) and t5 (a failure, max_failures 1).
            "failing": {"streams": ["work"], "max_failures": 1, "concurrency": 4},
            # Read by hand: five entries pending, one of them delivered twice.
            "lagging": {"streams": ["work"]},
        }
    )


def cli_env(redis_url: str, config: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "ZAPSTREAM_CONFIG": str(config),
        "ARCHIVE_DIR": str(tmp_path / "archive"),
        "DUCKDB_PATH": str(tmp_path / "analytics.duckdb"),
    }


async def run_inspect(env: dict[str, str], *args: str) -> str:
    """`zapstream inspect` as a user runs it; its stdout (exit status 0 required)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zapstream", "inspect", *args, cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def inspect_json(env: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(await run_inspect(env, "--json"))
    return found


async def raw(redis: Redis) -> dict[str, Any]:
    """What redis-cli would answer, command by command."""
    seconds, micros = await redis.time()
    groups: dict[str, Any] = {}
    for info in await redis.xinfo_groups(WORK):
        name = text(info["name"])
        last = text(info["last-delivered-id"])
        summary = await redis.xpending(WORK, name)
        detail = await redis.xpending_range(WORK, name, min="-", max="+", count=1000)
        consumers = {
            text(c["name"]): {
                "pending": int(c["pending"]),
                "idle_s": int(c["idle"]) / 1000,
                "alive": bool(
                    await redis.exists(f"zapstream:{{p0}}:alive:{name}:{text(c['name'])}")
                ),
            }
            for c in await redis.xinfo_consumers(WORK, name)
        }
        groups[name] = {
            "lag": info["lag"],
            "counted_lag": await count_after(redis, WORK, last),
            "pending": int(info["pending"]),
            "last_delivered": last,
            "oldest_pending": text(summary["min"]) if summary["min"] else "",
            "redelivered": sum(1 for item in detail if item["times_delivered"] > 1),
            "consumers": consumers,
        }
    stream = await redis.xinfo_stream(WORK)
    return {
        "now_ms": int(seconds) * 1000 + int(micros) // 1000,
        "length": int(await redis.xlen(WORK)),
        "first": text(stream["first-entry"][0]),
        "last": text(stream["last-entry"][0]),
        "groups": groups,
        "dead": {
            group: int(await redis.xlen(f"zapstream:{{p0}}:dead:{group}"))
            for group in ("held", "failing", "lagging")
        },
    }


def alive(group: str, consumer: str) -> str:
    return f"zapstream:{{p0}}:alive:{group}:{consumer}"


def id_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def within_age(age: float, entry_id: str, before: dict[str, Any], after: dict[str, Any]) -> bool:
    """The age inspect gave lies between the ages at the two raw reads (ms rounding aside)."""
    low = (before["now_ms"] - id_ms(entry_id)) / 1000
    high = (after["now_ms"] - id_ms(entry_id)) / 1000
    return low - 0.002 <= age <= high + 0.002


async def build_scenario(redis: Redis, workers: Workers, topo: Topology) -> list[str]:
    ids = await append(redis, topo, "work", ENTRIES)

    # lagging: created at the start, five entries read by a consumer that has no heartbeat,
    # one of them claimed by another (its second delivery).
    await redis.xgroup_create(WORK, "lagging", id="0")
    await redis.xreadgroup("lagging", "reader-1", {WORK: ">"}, count=5)
    await redis.xclaim(WORK, "lagging", "reader-2", min_idle_time=0, message_ids=[ids[2]])

    # failing: a real worker handles all twenty, dead-letters three, then stops cleanly.
    failing = workers.start(
        topo, Options(reject_turns=("t3", "t4"), fail_turns=("t5",)), group="failing"
    )

    async def failing_done() -> bool:
        groups = {text(g["name"]): g for g in await redis.xinfo_groups(WORK)}
        group = groups.get("failing")
        return (
            group is not None
            and group["lag"] == 0
            and group["pending"] == 0
            and await redis.xlen("zapstream:{p0}:dead:failing") == 3
        )

    await eventually(failing_done, timeout=20)
    failing.terminate()
    assert workers.wait(failing, timeout=20) == 0

    # held: a real worker stuck in its handler, killed with SIGKILL while it holds two entries.
    held = workers.start(topo, Options(slow_times=1000, slow_seconds=600), group="held")

    async def holds_two() -> bool:
        groups = {text(g["name"]): g for g in await redis.xinfo_groups(WORK)}
        return "held" in groups and groups["held"]["pending"] == 2

    await eventually(holds_two, timeout=20)
    held.kill()
    workers.wait(held, timeout=10)

    # Its heartbeat expires after the group's idle time (1 s): then it reads as dead.
    async def heartbeat_gone() -> bool:
        return not [key async for key in redis.scan_iter(match="zapstream:{p0}:alive:held:*")]

    await eventually(heartbeat_gone, timeout=10)

    # A deletion after the lagging group's last-delivered id: Redis 7.0 reports its lag as nil.
    await redis.xdel(WORK, ids[12])
    return ids


async def test_inspect_json_equals_the_raw_redis_commands(
    redis: Redis, redis_url: str, workers: Workers, tmp_path: Path
) -> None:
    topo = scenario_topology()
    config = tmp_path / "streams.json"
    config.write_bytes(msgspec.json.encode(msgspec.to_builtins(topo, enc_hook=float)))
    env = cli_env(redis_url, config, tmp_path)
    ids = await build_scenario(redis, workers, topo)

    before = await raw(redis)
    found = await inspect_json(env)
    after = await raw(redis)

    # Nothing moved between the two raw reads but the clock.
    for name in ("length", "first", "last", "dead"):
        assert before[name] == after[name], name
    for name, group in before["groups"].items():
        for field in ("lag", "counted_lag", "pending", "oldest_pending", "redelivered"):
            assert group[field] == after["groups"][name][field], (name, field)

    work = next(s for s in found["streams"] if s["key"] == WORK)
    assert work["length"] == before["length"] == ENTRIES - 1
    assert (work["first"], work["last"]) == (before["first"], before["last"])
    assert within_age(work["first_age_s"], work["first"], before, after)
    assert within_age(work["last_age_s"], work["last"], before, after)

    groups = {g["name"]: g for g in work["groups"]}
    assert set(groups) == {"held", "failing", "lagging"}
    for name, group in groups.items():
        expected = before["groups"][name]
        assert group["pending"] == expected["pending"], name
        assert group["last_delivered"] == expected["last_delivered"], name
        assert group["oldest_pending"] == expected["oldest_pending"], name
        assert group["redelivered"] == expected["redelivered"], name
        assert group["dead_letters"] == before["dead"][name], name
        if expected["lag"] is None:
            assert group["lag_computed"] and group["lag"] == expected["counted_lag"], name
        else:
            assert not group["lag_computed"] and group["lag"] == expected["lag"], name
        if group["oldest_pending"]:
            assert within_age(group["oldest_pending_age_s"], group["oldest_pending"], before, after)
        consumers = {c["name"]: c for c in group["consumers"]}
        assert set(consumers) == set(expected["consumers"]), name
        elapsed = (after["now_ms"] - before["now_ms"]) / 1000
        for consumer, seen in consumers.items():
            was = expected["consumers"][consumer]
            assert seen["pending"] == was["pending"], consumer
            assert (
                seen["alive"]
                == was["alive"]
                == after["groups"][name]["consumers"][consumer]["alive"]
            ), consumer
            assert was["idle_s"] - 0.002 <= seen["idle_s"] <= was["idle_s"] + elapsed + 0.002

    # The scenario is what it claims to be.
    lagging, held = groups["lagging"], groups["held"]
    assert lagging["pending"] == 5 and lagging["redelivered"] == 1
    assert lagging["lag_computed"] and lagging["lag"] == ENTRIES - 5 - 1  # one deleted
    assert held["pending"] == 2
    assert [c["alive"] for c in held["consumers"]] == [False]
    assert groups["failing"]["pending"] == 0 and groups["failing"]["dead_letters"] == 3
    codes = {(d["group"], d["code"]): d["count"] for d in found["dead_letters"]}
    assert codes == {("failing", "rejected"): 2, ("failing", "RuntimeError"): 1}
    assert ids[12] not in {lagging["last_delivered"], work["first"], work["last"]}


async def test_inspect_renders_a_table_and_watch_redraws(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    topo = scenario_topology()
    config = tmp_path / "streams.json"
    config.write_bytes(msgspec.json.encode(msgspec.to_builtins(topo, enc_hook=float)))
    env = cli_env(redis_url, config, tmp_path)
    ids = await append(redis, topo, "work", 3)
    await redis.xgroup_create(WORK, "lagging", id="0")
    await redis.xdel(WORK, ids[1])

    shown = await run_inspect(env)
    assert "lagging" in shown and "2*" in shown  # lag counted: one entry deleted
    assert "Redis reports no lag after a deletion" in shown

    watching = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zapstream",
        "inspect",
        "--watch",
        "--json",
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    assert watching.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(watching.stdout.readline(), 30))
        await redis.xadd(WORK, {"type": "turn.ready", "v": "1", "session_id": "s", "turn_id": "x"})
        second = json.loads(await asyncio.wait_for(watching.stdout.readline(), 30))
    finally:
        watching.kill()
        await watching.wait()
    lengths = [next(s for s in d["streams"] if s["key"] == WORK)["length"] for d in (first, second)]
    assert lengths == [2, 3]
