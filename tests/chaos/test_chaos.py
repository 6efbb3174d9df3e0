"""The chaos run: the promises hold while processes die, servers restart and inputs are
hostile. Nothing lost, nothing answered twice, read models equal to a replay.

`zapstream serve`, three `zapstream work` and `zapstream project` run as real processes over
a Redis and a PostgreSQL cluster of the test's own. 250 seeded customers post bursts of
messages over signed HTTP as Meta does (duplicates at once, notifications re-sent later and
serialised another way, undecodable messages, forged signatures; every refusal retried until
200), and a Graph API stand-in takes the replies and posts their `sent` statuses back, as
Meta does, but refuses three customers' replies with an error code nobody knows: that poison
must end in the dead letters, and nothing else may. Meanwhile a seeded schedule kills a
worker with SIGKILL every few seconds (restarted at once), kills Redis once and starts it
again (AOF, appendfsync always), and stops PostgreSQL for several seconds.

Once it is quiet, one row per promise is printed as a table (pytest -s shows it) and
asserted. CHAOS_SEED replays a run's inputs and schedule (the interleaving of processes is
the machine's own).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from projections.analytics import AnalyticsTarget
from projections.sessions import SessionsTarget
from tests import outcomes
from tests.chaos.promises import (
    MESSAGES,
    Models,
    Row,
    doubles,
    first_difference,
    logged_messages,
    model_row,
    pending,
    render,
    still_moving,
)
from tests.chaos.schedule import Chaos, make_schedule
from tests.chaos.stack import Stack
from tests.chaos.traffic import Customer, Meta, make_plan
from tests.notifications import SECRET
from tests.processes import ROOT
from tests.servers import OwnPostgres, OwnRedis, Webhook
from tests.waiting import eventually
from zapstream.connections import open_redis
from zapstream.envelope import decode_fields
from zapstream.events import ReplyGenerated, ReplySent
from zapstream.keys import doubt_key
from zapstream.standin import Answer, GraphStandIn, Received, error
from zapstream.topology import Topology

CUSTOMERS = 250
POISON = 3  # customers whose every reply the stand-in refuses with an unknown code
POISON_CODE = 999999
HOSTILE = 4  # customers who also send an undecodable message
FORGED = 5  # notifications signed with another secret
SPAN = 60.0  # seconds over which customers start; the chaos schedule runs 10 s longer
QUIET_S = 120.0  # the deadline for everything to settle after the traffic
WORKERS = 3


def chaos_topology(make_topology: Callable[..., Topology]) -> Topology:
    """Short windows so that a run is minutes, not hours: a killed consumer's entries are
    taken over after 2 s, a part in doubt waits 8 s for its status (longer than Redis stays
    down, so a status held up by the outage still settles it before any resend)."""
    return outcomes.killing_topology(
        make_topology, idle="2s", backoff=("100ms", "2s"), send={"timeout": "5s", "doubt": "8s"}
    )


@pytest.mark.slow
@pytest.mark.timeout(330)
async def test_chaos_loses_nothing_answers_nothing_twice_and_models_equal_a_replay(
    own_redis: OwnRedis,
    own_pg: OwnPostgres,
    make_topology: Callable[..., Topology],
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 32))
    print(f"\nchaos seed {seed} (set CHAOS_SEED to replay)")
    rng = random.Random(seed)
    began = time.monotonic()
    topology = chaos_topology(make_topology)
    config = tmp_path / "streams.yaml"
    config.write_bytes(msgspec.json.encode(msgspec.to_builtins(topology, enc_hook=float)))
    plan = make_plan(rng, customers=CUSTOMERS, span=SPAN, poison=POISON, hostile=HOSTILE)
    schedule = make_schedule(rng, span=SPAN + 10, workers=WORKERS)
    print(schedule)
    poisoned = {c.number for c in plan if c.poison}

    def script(request: Received) -> Answer | None:
        if not request.is_text:
            return None  # read receipts and typing indicators: taken
        if request.to.lstrip("+") in poisoned:
            return error(POISON_CODE, "poison")
        return Answer(delay=0.03)  # Meta's latency: a kill may land inside a POST

    graph = GraphStandIn(app_secret=SECRET, script=script)
    graph_server = Webhook(graph)
    await graph_server.start()
    stack = Stack(own_redis.url, own_pg.url, config, graph_server.url + "/v25.0", tmp_path)
    graph.webhook_url = stack.url
    supervisor: asyncio.Task[None] | None = None
    stack.start()
    try:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with (
            httpx.AsyncClient(timeout=10, limits=limits) as http,
            open_redis(own_redis.url) as redis,
        ):
            await eventually(lambda: _healthy(http, stack), timeout=30, interval=0.1)
            supervisor = asyncio.create_task(stack.supervise())
            started = time.monotonic()
            meta = Meta(http, stack.url, started)
            chaos = Chaos(schedule, stack, own_redis, own_pg, started)
            await asyncio.gather(
                chaos.run(),
                *(meta.customer(customer) for customer in plan),
                *(meta.forge() for _ in range(FORGED)),
            )
            await asyncio.gather(*meta.later)
            traffic_s = time.monotonic() - started
            wamids = {wamid for customer in plan for wamid in customer.wamids}
            waiting: list[str] = []

            async def quiet() -> bool:
                nonlocal waiting
                accepted = {r.wamid for r in graph.texts}
                waiting = await still_moving(redis, topology, wamids, CUSTOMERS, accepted)
                return not waiting

            try:
                await eventually(quiet, timeout=QUIET_S, interval=0.5)
            except AssertionError:
                stack.stop_supervising()
                rows = await _promises(redis, topology, plan, graph, stack, chaos, meta)
                stuck = stack.dump(stack.project) if "projections behind" in str(waiting) else ""
                raise AssertionError(
                    f"seed {seed}: not quiet {QUIET_S:g}s after the traffic: {waiting}\n"
                    f"{render(rows)}\n{stack.tail()}\n{stuck}"
                ) from None
            quiet_s = time.monotonic() - started - traffic_s
            stack.stop_supervising()
            await supervisor
            stack.stop()  # SIGTERM: analytics publishes and lets go of its file
            rows = await _promises(redis, topology, plan, graph, stack, chaos, meta)
            live = await _models(own_pg.url, stack.duckdb_path)
            replayed_with = await _zapstream(stack, "replay", "--projection", "all", "--yes")
            replayed = await _models(own_pg.url, stack.duckdb_path)
    finally:
        stack.stop_supervising()
        if supervisor is not None:
            await supervisor
        stack.stop()
        await graph.close()
        await graph_server.stop()

    rows += [model_row(name, live[name], replayed[name]) for name in ("sessions", "analytics")]
    print(chaos_log := "\n".join(chaos.log))
    print(replayed_with.strip())
    exited = "".join(f"\n{name} exited with {status}: {last}" for name, status, last in stack.exits)
    print(render(rows) + exited)
    print(
        f"seed {seed}: traffic {traffic_s:.0f}s, quiet {quiet_s:.0f}s later, "
        f"{time.monotonic() - began:.0f}s in all"
    )
    broken = [row for row in rows if not row.ok]
    details = "".join(
        f"\n{name}: {first_difference(live[name], replayed[name])}"
        for name in ("sessions", "analytics")
        if live[name] != replayed[name]
    )
    assert not broken, f"seed {seed}: promises broken\n{render(rows)}{exited}\n{chaos_log}{details}"


async def _healthy(http: httpx.AsyncClient, stack: Stack) -> bool:
    try:
        return (await http.get(f"{stack.base_url}/ready")).is_success
    except httpx.TransportError:
        return False


async def _promises(
    redis: Redis,
    topology: Topology,
    plan: list[Customer],
    graph: GraphStandIn,
    stack: Stack,
    chaos: Chaos,
    meta: Meta,
) -> list[Row]:
    """Every row but the read models'."""
    rows = []
    wamids = {wamid for customer in plan for wamid in customer.wamids}
    logged = await logged_messages(redis)
    twice = sum(1 for n in logged.values() if n > 1)
    unknown = set(logged) - wamids
    rejected = sum(
        1 for _, fields in await redis.xrange(MESSAGES) if fields[b"type"] == b"message.rejected"
    )
    rows.append(
        Row(
            "every message once in the log",
            f"{len(wamids)} once ({HOSTILE} rejected)",
            f"{sum(1 for wamid in wamids if logged[wamid] == 1)} once, {twice} twice, "
            f"{len(wamids - set(logged))} missing, {len(unknown)} unknown ({rejected} rejected)",
            set(logged) == wamids and twice == 0 and rejected == HOSTILE,
        )
    )
    tally = meta.tally
    rows.append(
        Row(
            "POSTs as Meta sends them, each until 200",
            "all answered 200; forged 401",
            f"{tally.posts} answered 200 ({tally.duplicates} duplicates), {tally.refused} "
            f"refused and retried (the slowest took {max(tally.took):.1f}s), {tally.forged} "
            "forged: 401",
            tally.forged == FORGED,
        )
    )

    turns = await outcomes.turns(redis)
    ends = await outcomes.ends(redis)
    once = sum(1 for turn in turns if ends[turn] == 1)
    strays = set(ends) - set(turns)
    rows.append(
        Row(
            "every turn exactly one terminal event",
            f"{len(turns)} turns, one end each",
            f"{once} once, {len(turns) - once} not once, {len(strays)} ends of no turn",
            once == len(turns) and not strays and len(turns) >= CUSTOMERS,
        )
    )

    replies = [decode_fields(f) for _, f in await redis.xrange(outcomes.REPLIES)]
    sent = [r for r in replies if isinstance(r, ReplySent)]
    posted = {r.wamid for r in graph.texts}
    unposted = [r for r in sent if not set(r.wamids or [r.message_id]) <= posted]
    resent = {event["part"] for event in stack.events("part_resent")}
    doubled = doubles(r.callback for r in graph.texts)
    unexplained = {part: n for part, n in doubled.items() if part not in resent}
    rows.append(
        Row(
            "reply parts POSTed to the Graph API",
            f"{len(sent)} replies sent, once each",
            f"{len({r.callback for r in graph.texts})} parts taken, {len(doubled)} twice "
            f"({len(unexplained)} unexplained), {len(unposted)} sent but never taken",
            not unexplained and not unposted and len(sent) > 0,
        )
    )
    dead = await outcomes.dead_replies(redis)
    designed = outcomes.lost(dead)
    in_doubt = {p.decode() for p in await redis.zrange(doubt_key(topology, 0), 0, -1)}
    settled = sum(1 for _ in stack.events("part_settled_by_status"))
    seen = settled + len(resent) + len(designed)
    rows.append(
        Row(
            "replies in doubt settled",
            "all, or dead-lettered by design",
            f"{seen} seen: {settled} by their status, {len(resent)} resent, {len(designed)} "
            f"dead-lettered; {len(in_doubt - set(designed.values()))} left",
            in_doubt == set(designed.values()),
        )
    )

    counts = await pending(redis, topology)
    rows.append(
        Row(
            "nothing pending",
            "0",
            f"{sum(counts.values())} (pending, unread or failing, {len(counts)} group streams)",
            not any(counts.values()),
        )
    )

    poisoned = {c.number for c in plan if c.poison}
    poison = {
        r.reply_id for r in replies if isinstance(r, ReplyGenerated) and r.customer in poisoned
    }
    dead_poison = {d.reply_id for d in dead if d.customer in poisoned}
    codes = {d.code for d in dead if d.customer in poisoned and not d.part}
    others = [d for d in dead if d.customer not in poisoned and not d.part]
    elsewhere = {
        group: int(await redis.xlen(f"zapstream:{{p0}}:dead:{group}"))
        for group in topology.groups
        if group != "send"
    }
    rows.append(
        Row(
            "dead letters: the injected poison only",
            f"{len(poison)} (whatsapp:{POISON_CODE})",
            f"{len(dead_poison)} poison ({', '.join(sorted(codes)) or '-'}), "
            f"{len(others) + sum(elsewhere.values())} other",
            bool(poison)
            and dead_poison == poison
            and codes == {f"whatsapp:{POISON_CODE}"}
            and not others
            and not any(elsewhere.values()),
        )
    )

    rows.append(
        Row(
            "workers killed with SIGKILL",
            ">= 5",
            f"{chaos.kills} ({chaos.skipped} skipped while Redis was down)",
            chaos.kills >= 5,
        )
    )
    rows.append(
        Row(
            "Redis restarts (SIGKILL, AOF)",
            "1",
            f"{chaos.redis_restarts} ({chaos.redis_outage_s:.1f}s down)",
            chaos.redis_restarts == 1,
        )
    )
    rows.append(
        Row(
            "PostgreSQL outage",
            ">= 5s",
            f"{chaos.pg_outage_s:.1f}s",
            chaos.pg_outage_s >= 5,
        )
    )
    exits = collections.Counter(name for name, _, _ in stack.exits)
    rows.append(
        Row(
            "processes that exited on their own",
            "none: they ride outages out",
            ", ".join(f"{name} x{n}" for name, n in sorted(exits.items())) or "none",
            not exits,
        )
    )
    return rows


async def _models(database_url: str, duckdb_path: str) -> dict[str, Models]:
    """Both read models, every table row by row, read with no follower running."""
    sessions = SessionsTarget(database_url)
    await sessions.start()
    try:
        by_session = await sessions.read_all()
    finally:
        await sessions.close()
    analytics = AnalyticsTarget(duckdb_path)
    await analytics.start()
    try:
        by_analytics = await analytics.read_all()
    finally:
        await analytics.close()
    return {"sessions": by_session, "analytics": by_analytics}


async def _zapstream(stack: Stack, *args: str) -> str:
    """Run a one-off `zapstream` command over the stack; its output (it must succeed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zapstream", *args, cwd=ROOT, env=stack.cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, f"zapstream {' '.join(args)}: {err.decode()[-2000:]}"
    return out.decode()
