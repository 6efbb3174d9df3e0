"""Dead letters: `zapstream dlq list | requeue | drop` as an operator runs them (real
processes on the test database), against groups run by the real runtime."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from processors.deadletter import error_code, read_dead_letters
from processors.runtime import Delivery, GroupRunner, HandlerContext, Reject
from tests.processors.recording import append
from zapstream.envelope import decode_fields
from zapstream.events import DeadLetterDropped, DeadLetterRequeued
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.topology import Topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
WORK = "zapstream:{p0}:work"
OPERATIONS = "zapstream:{p0}:operations"
CALLS = "test:dlq:calls"  # "<group> <entry id>" -> handler calls
REJECT = "test:dlq:reject"  # "<group> <turn id>": the handler raises Reject
FAIL = "test:dlq:fail"  # "<group> <turn id>": the handler raises RuntimeError
NOT_FOUND = "not found: no such dead letter, or already requeued or dropped"


def dead(group: str, partition: int = 0) -> str:
    return f"zapstream:{{p{partition}}}:dead:{group}"


def make_topology(partitions: int = 1) -> Topology:
    """Groups a and b both read `work`; a short idle, so a requeued entry is taken soon."""
    spec = {
        "streams": ["work"],
        "idle": "1s",
        "max_failures": 2,
        "backoff": {"base": "10ms", "max": "20ms"},
    }
    document = {
        "partitions": partitions,
        "streams": {"messages": {}, "statuses": {}, "work": {}, "operations": {}},
        "groups": {"a": spec, "b": spec},
    }
    return parse_topology(msgspec.json.encode(document), source="test topology")


async def handle(ctx: HandlerContext, delivery: Delivery) -> None:
    """Count the call per group, then fail as the test's sets say."""
    turn = f"{delivery.group} {getattr(delivery.envelope.event, 'turn_id', '')}"
    await ctx.redis.hincrby(CALLS, f"{delivery.group} {delivery.envelope.entry_id}", 1)
    if await ctx.redis.sismember(REJECT, turn):
        raise Reject("this turn cannot be answered")
    if await ctx.redis.sismember(FAIL, turn):
        raise RuntimeError(f"failure of {turn}")


async def drain(redis: Redis, topology: Topology, *groups: str) -> None:
    for group in groups or tuple(topology.groups):
        ctx = HandlerContext(redis=redis, settings=Settings(), topology=topology, metrics=Metrics())
        await GroupRunner(ctx, group, handle).drain(timeout=20)


async def calls(redis: Redis) -> dict[str, int]:
    found: dict[bytes, bytes] = await redis.hgetall(CALLS)  # type: ignore[assignment]
    return {k.decode(): int(v) for k, v in found.items()}


async def dead_ids(redis: Redis, group: str) -> list[str]:
    return [entry_id for entry_id, _ in await entries(redis, dead(group))]


async def entries(redis: Redis, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
    found: Any = await redis.xrange(key)
    return [(entry_id.decode(), fields) for entry_id, fields in found]


class Run(msgspec.Struct, frozen=True):
    code: int
    out: str
    err: str


Dlq = Callable[..., Awaitable[Run]]


@pytest.fixture
def dlq(redis_url: str, tmp_path: Path) -> Dlq:
    """Run `zapstream dlq ARGS...` in its own process on the test database."""
    config = tmp_path / "streams.json"  # JSON is YAML: the topology of make_topology

    async def run(*args: str, topology: Topology | None = None) -> Run:
        builtins = msgspec.to_builtins(topology or make_topology(), enc_hook=float)
        config.write_bytes(msgspec.json.encode(builtins))
        env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "ZAPSTREAM_CONFIG": str(config)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zapstream",
            "dlq",
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await process.communicate()
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode())

    return run


async def fail_some(redis: Redis, topology: Topology, turns: int, *failing: str) -> list[str]:
    """Append turns t0..; those named (`group turn`) are rejected; drain every group."""
    ids = await append(redis, topology, "work", turns)
    if failing:
        await redis.sadd(REJECT, *failing)
    await drain(redis, topology)
    return ids


async def test_a_requeue_goes_back_to_the_group_that_failed_it_alone(
    redis: Redis, dlq: Dlq
) -> None:
    topology = make_topology()
    ids = await fail_some(redis, topology, 3, "a t1")
    (letter,) = await dead_ids(redis, "a")
    assert await dead_ids(redis, "b") == []
    assert await calls(redis) == {f"{g} {i}": 1 for g in "ab" for i in ids}
    await redis.delete(REJECT)  # fixed: the entry can now succeed

    run = await dlq("requeue", letter)

    assert (run.code, run.err) == (0, "")
    assert run.out.startswith(f"requeued {letter}: work {ids[1]} is pending again for group a")
    assert await dead_ids(redis, "a") == []
    await drain(redis, topology)
    assert await calls(redis) == {**{f"{g} {i}": 1 for g in "ab" for i in ids}, f"a {ids[1]}": 2}
    assert (await redis.xpending(WORK, "a"))["pending"] == 0
    assert await redis.xlen(WORK) == 3  # nothing appended: b and the read models see nothing
    ((event_id, fields),) = await entries(redis, OPERATIONS)
    assert run.out.rstrip().endswith(f"(deadletter.requeued {event_id})")
    assert decode_fields(fields) == DeadLetterRequeued(
        session_id="s1",
        group="a",
        dead_letter_id=letter,
        stream="work",
        entry_id=ids[1],
        error="rejected: this turn cannot be answered",
        code="rejected",
    )


async def test_requeuing_one_dead_letter_twice_at_once_and_again_delivers_it_once(
    redis: Redis, dlq: Dlq
) -> None:
    topology = make_topology()
    ids = await fail_some(redis, topology, 1, "a t0")
    (letter,) = await dead_ids(redis, "a")
    await redis.delete(REJECT)

    both = await asyncio.gather(dlq("requeue", letter), dlq("requeue", letter))
    again = await dlq("requeue", letter)

    assert sorted(run.code for run in both) == [0, 1]
    for run in [*(run for run in both if run.code), again]:
        assert run.code == 1 and run.out == ""
        assert run.err == f"zapstream: dlq requeue: {letter}: {NOT_FOUND}\n"
    await drain(redis, topology)
    assert (await calls(redis))[f"a {ids[0]}"] == 2
    assert await redis.xlen(OPERATIONS) == 1


async def test_requeue_all_of_a_group(redis: Redis, dlq: Dlq) -> None:
    topology = make_topology()
    ids = await fail_some(redis, topology, 4, "a t0", "a t2", "a t3", "b t1")
    assert len(await dead_ids(redis, "a")) == 3
    await redis.delete(REJECT)

    run = await dlq("requeue", "--all", "--group", "a")

    assert run.code == 0 and len(run.out.splitlines()) == 3
    assert await dead_ids(redis, "a") == []
    assert len(await dead_ids(redis, "b")) == 1  # another group's: left alone
    await drain(redis, topology)
    done = await calls(redis)
    assert [done[f"a {i}"] for i in ids] == [2, 1, 2, 2]
    assert [done[f"b {i}"] for i in ids] == [1, 1, 1, 1]
    assert await redis.xlen(OPERATIONS) == 3


async def test_requeue_needs_ids_or_all(dlq: Dlq, redis: Redis) -> None:
    assert (await dlq("requeue")).code == 2
    assert (await dlq("requeue", "1-0", "--all")).code == 2
    assert (await dlq("requeue", "not-an-id")).code == 2


async def test_drop_deletes_the_dead_letter_and_logs_it(redis: Redis, dlq: Dlq) -> None:
    topology = make_topology()
    ids = await fail_some(redis, topology, 2, "a t1")
    (letter,) = await dead_ids(redis, "a")

    run = await dlq("drop", letter)
    again = await dlq("drop", letter)

    assert run.code == 0 and run.out.startswith(f"dropped {letter}: work {ids[1]} of group a")
    assert again.code == 1 and NOT_FOUND in again.err
    assert await dead_ids(redis, "a") == []
    await drain(redis, topology)
    assert (await calls(redis))[f"a {ids[1]}"] == 1  # never delivered again
    ((_, fields),) = await entries(redis, OPERATIONS)
    event = decode_fields(fields)
    assert isinstance(event, DeadLetterDropped)
    assert (event.group, event.dead_letter_id, event.entry_id) == ("a", letter, ids[1])


async def test_a_requeued_entry_that_fails_again_is_dead_lettered_again(
    redis: Redis, dlq: Dlq
) -> None:
    topology = make_topology()
    (entry_id,) = await append(redis, topology, "work", 1)
    await redis.sadd(FAIL, "a t0")  # a failure, not a Reject: counted up to max_failures
    await drain(redis, topology)
    (first,) = await dead_ids(redis, "a")

    assert (await dlq("requeue", first)).code == 0
    await drain(redis, topology)

    (second,) = await dead_ids(redis, "a")
    assert second != first
    ((_, fields),) = await entries(redis, dead("a"))
    assert fields[b"dlq_entry_id"].decode() == entry_id
    assert fields[b"dlq_failures"] == b"2"  # counted afresh: max_failures again
    assert fields[b"dlq_code"] == b"RuntimeError"
    assert (await calls(redis))[f"a {entry_id}"] == 4
    await redis.delete(FAIL)
    assert (await dlq("requeue", second)).code == 0
    await drain(redis, topology)
    assert (await calls(redis))[f"a {entry_id}"] == 5
    assert await dead_ids(redis, "a") == []


async def test_list_json_is_the_dead_letter_streams(redis: Redis, dlq: Dlq) -> None:
    topology = make_topology()
    await fail_some(redis, topology, 3, "a t0", "a t2", "b t2")
    await redis.xadd(WORK, {"type": "no.such.event", "v": "1"})
    await drain(redis, topology, "b")

    run = await dlq("list", "--json")
    table = await dlq("list", "--group", "b")

    assert run.code == 0
    listed: list[dict[str, Any]] = json.loads(run.out)
    expected: list[dict[str, Any]] = []
    for group in "ab":
        for entry_id, raw in await entries(redis, dead(group)):
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            expected.append(
                {
                    "id": entry_id,
                    "group": group,
                    "key": dead(group),
                    "stream": fields["dlq_stream"],
                    "entry_id": fields["dlq_entry_id"],
                    "type": fields["type"],
                    "session_id": fields.get("session_id", ""),
                    "error": fields["dlq_error"],
                    "code": fields["dlq_code"],
                    "failures": int(fields["dlq_failures"]),
                    "deliveries": int(fields["dlq_deliveries"]),
                    "consumer": fields["dlq_consumer"],
                }
            )
    assert len(expected) == 4
    ages = [letter.pop("age_s") for letter in listed]
    assert all(0 <= age < 60 for age in ages)
    assert sorted(listed, key=lambda d: d["id"]) == sorted(expected, key=lambda d: d["id"])
    assert {letter["code"] for letter in listed} == {"rejected", "undecodable"}
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == [
        "id", "group", "stream", "entry", "type", "session", "code", "fails", "age", "error"
    ]  # fmt: skip
    assert sorted(line.split()[0] for line in lines[1:]) == await dead_ids(redis, "b")


async def test_an_unknown_id_fails_with_one_line_after_the_others(redis: Redis, dlq: Dlq) -> None:
    topology = make_topology()
    await fail_some(redis, topology, 1, "a t0")
    (letter,) = await dead_ids(redis, "a")

    run = await dlq("requeue", "1-0", letter)

    assert run.code == 1
    assert run.err == f"zapstream: dlq requeue: 1-0: {NOT_FOUND}\n"
    assert run.out.startswith(f"requeued {letter}:")
    assert await dead_ids(redis, "a") == []


async def test_an_id_in_two_groups_dead_letters_must_be_named_with_its_group(
    redis: Redis, dlq: Dlq
) -> None:
    topology = make_topology()
    await fail_some(redis, topology, 1, "a t0")
    ((letter, fields),) = await entries(redis, dead("a"))
    copy: dict[Any, Any] = {**fields, b"dlq_group": b"b"}
    await redis.xadd(dead("b"), copy, id=letter)  # the same id as a's

    refused = await dlq("requeue", letter)
    named = await dlq("requeue", f"b/{letter}")

    assert refused.code == 1
    assert refused.err == (
        f"zapstream: dlq requeue: {letter}: in several dead-letter streams: "
        f"name one of a/{letter}, b/{letter}\n"
    )
    assert named.code == 0 and "for group b" in named.out
    assert await dead_ids(redis, "a") == [letter] and await dead_ids(redis, "b") == []


async def test_a_dead_letter_whose_source_was_trimmed_stays(redis: Redis, dlq: Dlq) -> None:
    topology = make_topology()
    ids = await fail_some(redis, topology, 1, "a t0")
    (letter,) = await dead_ids(redis, "a")
    await redis.xdel(WORK, ids[0])

    run = await dlq("requeue", letter)

    assert run.code == 1 and "is no longer in the stream (trimmed)" in run.err
    assert await dead_ids(redis, "a") == [letter]
    assert await redis.xlen(OPERATIONS) == 0


async def test_dead_letters_in_several_partitions_are_read_and_named(
    redis: Redis, dlq: Dlq
) -> None:
    topology = make_topology(partitions=2)
    for partition in range(2):
        await append(redis, topology, "work", 1, partition=partition)
    await redis.sadd(REJECT, "a t0")
    await drain(redis, topology)
    letters = await read_dead_letters(redis, topology, "a")
    assert sorted(letter.key for letter in letters) == [dead("a", 0), dead("a", 1)]

    run = await dlq("requeue", "--all", topology=topology)

    assert run.code == 0 and len(run.out.splitlines()) == 2
    assert all(line.startswith("requeued a/p") for line in run.out.splitlines())


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("SendFailed: WhatsApp error 130429 (HTTP 429): Rate limit hit", "whatsapp:130429"),
        (
            "rejected: unknown WhatsApp error: WhatsApp error 131999 (HTTP 400): Odd",
            "whatsapp:131999",
        ),
        ("TimeoutError: handler ran past 60s", "timeout"),
        ("TimeoutError: the LLM took too long", "TimeoutError"),
        ("undecodable entry: unknown event type 'x'", "undecodable"),
        ("rejected: this turn cannot be answered", "rejected"),
        ("CompletionError: no answer in 2 attempts", "CompletionError"),
        ("WhatsApp error None (HTTP 502): Bad gateway", "error"),
        ("", "error"),
    ],
)
def test_error_code(error: str, code: str) -> None:
    assert error_code(error) == code
