"""The pipeline on a real three-primary Redis Cluster with 8 partitions: `zapstream serve`, three
`zapstream work` processes (one killed with SIGKILL at a seeded moment and restarted) and the
Graph API stand-in, all on 127.0.0.1. Every burst is one turn, every customer gets each
reply once and in order, and the keys really are spread over the cluster's nodes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from processors.responder import Prompt
from processors.rules import RulesResponder
from tests.cluster import OwnCluster
from tests.notifications import SECRET, VERIFY_TOKEN
from tests.servers import Webhook, free_port
from tests.waiting import eventually
from zapstream.connections import open_redis
from zapstream.keys import partition_for, stream_key
from zapstream.signing import sign
from zapstream.standin import GraphStandIn, notification
from zapstream.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[1]
BUSINESS = "100000000000001"
PARTITIONS = 8
SESSIONS = 200
WORKERS = 3
FIRST = ["oi", "bom dia", "qual o horário de domingo?"]  # one burst: one turn
SECOND = ["vocês entregam?", "quanto custa o frete?"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    own = OwnCluster(tmp_path_factory.mktemp("cluster"))
    try:
        own.start()
        yield own
    finally:
        own.stop()


@pytest.fixture
async def cluster_redis(cluster: OwnCluster) -> AsyncIterator[Redis]:
    """A cluster client on an emptied cluster."""
    async with open_redis(cluster.url) as redis:
        await redis.flushall()  # every primary
        yield redis


def test_the_partition_function_is_the_same_in_processes_with_other_hash_seeds() -> None:
    conversations = [f"{BUSINESS}:1555{n:07d}" for n in range(500)]
    program = (
        "import sys, json; from zapstream.keys import partition_for; "
        "print(json.dumps([partition_for(c, 8) for c in json.load(sys.stdin)]))"
    )
    answers = []
    for seed in ("1", "2", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=msgspec.json.encode(conversations),
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=True,
        )
        answers.append(msgspec.json.decode(done.stdout))
    assert answers[0] == answers[1] == answers[2]
    # The documented function: CRC-32 of the conversation key, modulo the count.
    assert answers[0] == [zlib.crc32(c.encode()) % 8 for c in conversations]
    assert answers[0] == [partition_for(c, 8) for c in conversations]
    assert set(answers[0]) == set(range(8))


def cluster_topology(tmp_path: Path) -> Path:
    """streams.yaml with 8 partitions, short windows, quick takeover and no rate ceiling."""
    document: dict[str, Any] = msgspec.to_builtins(
        load_topology(ROOT / "streams.yaml"), enc_hook=float
    )
    document["partitions"] = PARTITIONS
    document["debounce"].update(quiet=0.3, max_wait=3)
    document["send"]["doubt"] = 3  # a POST the kill cut before it left is resent after 3 s
    document["rate_limits"]["per_number"] = {"rate": 2000, "per": 1, "burst": 200}
    for group in document["groups"].values():
        group.update(idle=2, backoff={"base": 0.05, "factor": 2, "max": 0.5})
    path = tmp_path / "streams.json"
    path.write_bytes(msgspec.json.encode(document))
    return path


async def answer_to(messages: list[str]) -> str:
    prompt = Prompt(
        session_id="s", turn_id="1", messages=messages, kinds=["text"] * len(messages), context=[]
    )
    return (await RulesResponder().answer(prompt)).body


class Customers:
    """Signed webhook POSTs for many customers, sixteen at a time."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.gate = asyncio.Semaphore(16)

    async def burst(self, customer: str, texts: list[str], turn: int) -> None:
        """The customer's messages in one notification, as Meta batches a quick burst: their
        entries land together, well inside the debounce window, however loaded the test."""
        messages = [
            {
                "from": customer,
                "id": f"wamid.CLUSTER.{customer}.{turn}.{n}",
                "timestamp": str(int(time.time())),
                "type": "text",
                "text": {"body": text},
            }
            for n, text in enumerate(texts)
        ]
        contacts = [{"profile": {"name": "Customer"}, "wa_id": customer}]
        body = notification({"contacts": contacts, "messages": messages}, BUSINESS)
        async with self.gate:
            headers = {"X-Hub-Signature-256": sign(body, SECRET)}
            answer = await self.http.post(self.url, content=body, headers=headers)
            assert answer.status_code == 200, answer.text


async def test_on_a_cluster_each_burst_is_one_turn_and_replies_come_once_in_order(
    cluster: OwnCluster, cluster_redis: Redis, pg_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("ZAPSTREAM_TEST_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (set ZAPSTREAM_TEST_SEED to replay)")
    chance = random.Random(seed)
    config = cluster_topology(tmp_path)
    topology = load_topology(config)
    graph = GraphStandIn(app_secret=SECRET)
    graph_server = Webhook(graph)
    await graph_server.start()
    port = free_port()
    graph.webhook_url = f"http://127.0.0.1:{port}/webhook/whatsapp"
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": cluster.url,
        "ZAPSTREAM_CONFIG": str(config),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_ACCESS_TOKEN": "cluster-token",
        "WHATSAPP_API_URL": f"{graph_server.url}/v25.0",
        "DATABASE_URL": pg_url,
        "DUCKDB_PATH": str(tmp_path / "analytics.duckdb"),
        "ARCHIVE_DIR": str(tmp_path / "archive"),
    }
    processes: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        log = (tmp_path / f"{args[0]}-{len(processes)}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "zapstream", *args, cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.close()
        processes.append(process)
        return process

    customers = [f"1555{n:07d}" for n in range(SESSIONS)]
    try:
        await start("serve", "--port", str(port))
        workers = [await start("work") for _ in range(WORKERS)]
        await start("project")  # sessions, analytics and the archive
        async with httpx.AsyncClient(timeout=30) as http:
            await eventually(lambda: _ready(http, port), timeout=30, interval=0.1)
            writing = Customers(http, f"http://127.0.0.1:{port}/webhook/whatsapp")
            # One worker dies, at a seeded moment of the first round, and comes back.
            kill_after = chance.randrange(20, SESSIONS - 20)
            victim = chance.randrange(WORKERS)
            print(f"SIGKILL worker {victim} after {kill_after} replies")
            first = asyncio.gather(*(writing.burst(c, FIRST, 1) for c in customers))
            await eventually(lambda: len(graph.texts) >= kill_after, timeout=60, interval=0.05)
            workers[victim].send_signal(signal.SIGKILL)
            await workers[victim].wait()
            workers[victim] = await start("work")
            await first
            await eventually(lambda: len(graph.texts) >= SESSIONS, timeout=120, interval=0.1)
            await asyncio.gather(*(writing.burst(c, SECOND, 2) for c in customers))
            await eventually(lambda: len(graph.texts) >= 2 * SESSIONS, timeout=120, interval=0.1)
            # Nothing more comes: no reply is sent twice (settle everything in flight first).
            await eventually(lambda: _idle(cluster_redis, topology), timeout=60, interval=0.2)
            # The read models follow all 8 partitions of every stream, and rebuild from them.
            await eventually(lambda: _projected(pg_url), timeout=60, interval=0.2)
            await eventually(lambda: _reported(env), timeout=60, interval=0.5)
            assert (await _zapstream(env, "replay", "--projection", "all", "--yes"))[0] == 0
            assert await _projected(pg_url)
            assert await _reported(env)
            # The operator's views read the cluster too.
            scraped = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            inspected = await _inspect(env)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await graph.close()
        await graph_server.stop()

    expected = [await answer_to(FIRST), await answer_to(SECOND)]
    assert expected[0] != expected[1]
    by_customer: dict[str, list[str]] = {}
    for text in graph.texts:
        by_customer.setdefault(text.to.lstrip("+"), []).append(text.text)
    assert sorted(by_customer) == sorted(customers)
    wrong = {c: got for c, got in by_customer.items() if got != expected}
    assert not wrong, f"{len(wrong)} customers got other replies, e.g. {next(iter(wrong.items()))}"

    turns: dict[str, int] = {}
    for partition in range(PARTITIONS):
        key = stream_key(topology, "turns", partition)
        entries = await cluster_redis.xrange(key)
        assert entries, f"partition {partition} holds no turn"
        for _, fields in entries:
            session = fields[b"session_id"].decode()
            turns[session] = turns.get(session, 0) + 1
    assert len(turns) == SESSIONS and set(turns.values()) == {2}
    assert "zapstream_redis_read_failed 0.0" in scraped
    lags = [line for line in scraped.splitlines() if line.startswith("zapstream_group_lag{")]
    assert len(lags) == len(topology.groups) * PARTITIONS
    assert all(line.endswith(" 0.0") for line in lags)
    views = [view for view in inspected["streams"] if view["stream"] == "messages"]
    assert len(views) == PARTITIONS
    assert sum(view["length"] for view in views) == SESSIONS * (len(FIRST) + len(SECOND))
    nodes = {
        cluster_redis.get_node_from_key(stream_key(topology, "messages", p)).name  # type: ignore[attr-defined]
        for p in range(PARTITIONS)
    }
    assert len(nodes) >= 2, "the partitions did not spread over the cluster's nodes"


async def _projected(pg_url: str) -> bool:
    """Every session, turn, message and reply of the run is in PostgreSQL."""
    connection = await asyncpg.connect(pg_url, timeout=5)
    try:
        sessions, turns = await connection.fetchrow(
            "SELECT count(*), coalesce(sum(turn_count), 0) FROM zapstream.sessions"
        ) or (0, 0)
        by_direction = dict(
            await connection.fetch(
                "SELECT direction, count(*) FROM zapstream.messages GROUP BY direction"
            )
        )
    except asyncpg.UndefinedTableError:
        return False  # not migrated yet
    finally:
        await connection.close()
    inbound = SESSIONS * (len(FIRST) + len(SECOND))
    return (sessions, turns) == (SESSIONS, 2 * SESSIONS) and by_direction == {
        "in": inbound,
        "out": 2 * SESSIONS,
    }


async def _zapstream(env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """A one-shot command: its exit status and stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zapstream", *args, cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out


async def _reported(env: dict[str, str]) -> bool:
    """The analytics snapshot counts every session, message and reply of the run."""
    status, out = await _zapstream(env, "report", "--json")
    if status != 0:
        return False  # no snapshot published yet
    found = msgspec.json.decode(out)
    inbound = SESSIONS * (len(FIRST) + len(SECOND))
    counts = (found["sessions"], found["messages_in"], found["turns"], found["replies_sent"])
    return counts == (SESSIONS, inbound, 2 * SESSIONS, 2 * SESSIONS)


async def _inspect(env: dict[str, str]) -> Any:
    status, out = await _zapstream(env, "inspect", "--json")
    assert status == 0
    return msgspec.json.decode(out)


async def _ready(http: httpx.AsyncClient, port: int) -> bool:
    try:
        return (await http.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
    except httpx.HTTPError:
        return False


async def _idle(redis: Redis, topology: Topology) -> bool:
    """Every group has read everything and holds nothing pending, in every partition."""
    for group, spec in topology.groups.items():
        for stream in spec.streams:
            for partition in range(topology.partitions):
                key = stream_key(topology, stream, partition)
                for info in await redis.xinfo_groups(key):
                    if info["name"].decode() == group and (info["lag"] or info["pending"]):
                        return False
    return True
