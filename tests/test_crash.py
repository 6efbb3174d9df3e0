"""Crash: 300 sessions flowing through `zapstream work`, killed with SIGKILL at seeded moments
(some in the middle of a Graph API POST) and restarted. Every turn ends in exactly one
terminal event, and no reply is sent twice: a reply left in doubt by a kill is settled by the
`sent` status the stand-in posts back, as Meta would, before any resend.

One end is not an event: a part whose POST a kill cut (so no status came) is resent once after
send.doubt, and when a later kill cuts that resend too, the part is still in doubt after its
one resend. zapstream does not guess then (a third POST could be a double): the reply goes to
the send group's dead letters, whole, for an operator, and the part stays listed in doubt."""

from __future__ import annotations

import asyncio
import collections
import os
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
from redis.asyncio import Redis

from tests.notifications import BUSINESS, SECRET
from tests.outcomes import all_ended, dead_replies, killing_topology, lost
from tests.processes import Worker
from tests.servers import Webhook
from tests.waiting import eventually
from zapstream.envelope import decode_fields
from zapstream.events import ReplySent
from zapstream.signing import sign
from zapstream.standin import Answer, GraphStandIn, Received, text_notification
from zapstream.topology import Topology

SESSIONS = 300
KILLS = 4


def crash_topology(make_topology: Callable[..., Topology]) -> Topology:
    return killing_topology(
        make_topology, idle="1s", backoff=("50ms", "1s"), send={"timeout": "2s", "doubt": "3s"}
    )


async def test_kill_9_at_seeded_moments_loses_nothing_and_sends_nothing_twice(
    redis: Redis,
    redis_url: str,
    make_settings: Callable[..., object],
    make_topology: Callable[..., Topology],
    start_webhook: Callable[..., object],
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    rng = random.Random(seed)
    topology = crash_topology(make_topology)
    config = tmp_path / "streams.yaml"
    config.write_bytes(msgspec.json.encode(msgspec.to_builtins(topology, enc_hook=float)))
    webhook: Webhook = await start_webhook(make_settings(), topology)  # type: ignore[misc]

    # Meta answers each send after 40 ms; a kill lands inside a POST at these seeded counts.
    kill_at = set(rng.sample(range(20, 260), KILLS))
    graph = GraphStandIn(webhook_url=webhook.url + "/webhook/whatsapp", app_secret=SECRET)
    graph.script = lambda request: Answer(delay=0.04) if request.is_text else None
    graph_server = Webhook(graph)
    await graph_server.start()
    worker = Worker(redis_url, config, graph_server.url + "/v25.0", tmp_path)
    texts = 0

    def on_request(request: Received) -> None:
        nonlocal texts
        if request.is_text:
            texts += 1
            if texts in kill_at:
                worker.kill_and_restart()  # this POST's answer will reach a dead process

    graph.listeners.append(on_request)
    worker.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            plan = _plan(rng)
            await asyncio.gather(*(_customer(http, webhook.url, n, gaps) for n, gaps in plan))
        turns = await eventually(lambda: all_ended(redis, SESSIONS), timeout=90, interval=0.2)
    finally:
        worker.stop()
        await graph.close()
        await graph_server.stop()

    settled = worker.log_lines("part_settled_by_status")
    resent_parts = worker.log_lines("part_resent")
    print(
        f"{len(turns)} turns, {worker.started - 1} kills; replies in doubt: {settled} settled "
        f"by their `sent` status, {resent_parts} resent after send.doubt (their POST never "
        f"reached the stand-in); {len(graph.texts)} texts accepted"
    )
    assert worker.started - 1 == KILLS
    # Each kill cut a POST the stand-in had taken: that part was in doubt, and its status
    # (not a resend) settled it.
    assert settled >= KILLS
    sent = [e for e in await _replies(redis) if isinstance(e, ReplySent)]
    by_part = collections.Counter(r.callback for r in graph.texts)
    doubles = {part: n for part, n in by_part.items() if n > 1}
    # Every POST that reached the stand-in had its status posted back within milliseconds,
    # far inside send.doubt: so nothing may arrive twice (a resend is only ever of a part
    # whose POST never arrived).
    assert doubles == {}, f"sent twice: {doubles}"
    assert len(by_part) == len(sent)  # every reply sent reached the stand-in
    dead = await dead_replies(redis)
    assert all(reply.part for reply in dead), dead  # only the designed end: nothing else
    ended_in_doubt = lost(dead)
    print(f"{len(ended_in_doubt)} replies dead-lettered: their one resend was cut by a kill too")
    for part in ended_in_doubt.values():
        record = await redis.hgetall(f"zapstream:{{p0}}:send:{part}")
        assert (record[b"state"], record[b"attempts"]) == (b"posting", b"2"), part
        assert part not in by_part  # neither POST reached the stand-in
    in_doubt = await redis.zrange("zapstream:{p0}:doubt", 0, -1)
    assert sorted(in_doubt) == sorted(part.encode() for part in ended_in_doubt.values())


def _plan(rng: random.Random) -> list[tuple[int, list[float]]]:
    """Per session: the gaps before each of its 1 to 3 messages (seconds)."""
    plan = []
    for n in range(SESSIONS):
        start = rng.uniform(0, 6)
        gaps = [start] + [rng.choice([0.05, 0.1, 1.5]) for _ in range(rng.randint(0, 2))]
        plan.append((n, gaps))
    return plan


async def _customer(http: httpx.AsyncClient, url: str, n: int, gaps: list[float]) -> None:
    customer = f"1555{n:07d}"
    for i, gap in enumerate(gaps):
        await asyncio.sleep(gap)  # the customer's rhythm: input timing, not synchronisation
        body = text_notification(BUSINESS, customer, f"wamid.CRASH.{n}.{i}", f"hello {i}")
        headers = {"X-Hub-Signature-256": sign(body, SECRET), "Content-Type": "application/json"}
        response = await http.post(url + "/webhook/whatsapp", content=body, headers=headers)
        assert response.status_code == 200


async def _replies(redis: Redis) -> list[object]:
    return [decode_fields(f) for _, f in await redis.xrange("zapstream:{p0}:replies")]
