"""dedup_append(): one atomic script for dedup, session and XADD, on a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ingest.append import AppendBatcher, Appended, dedup_append, outbound_field
from ingest.payload import Inbound, decode_notification
from tests.notifications import messages_notification, status_notification, text_message
from tests.servers import OwnRedis
from tests.waiting import eventually
from zapstream.connections import open_redis
from zapstream.keys import conversation_record_key
from zapstream.topology import Topology

CUSTOMER = "15550001111"
CONVERSATION = f"100000000000001:{CUSTOMER}"
T0 = 1_767_261_600
HOUR = 3600


def message(wamid: str, timestamp: int, sender: str = CUSTOMER) -> Inbound:
    (item,) = decode_notification(
        messages_notification(text_message(wamid, sender, "hi", timestamp))
    )
    return item


async def append_one(redis: Redis, topology: Topology, item: Inbound) -> Appended:
    (result,) = await dedup_append(redis, topology, [item])
    assert result is not None
    return result


async def test_a_burst_is_one_session(redis: Redis, make_topology: Callable[..., Topology]) -> None:
    topology = make_topology()
    results = await dedup_append(
        redis, topology, [message(f"wamid.B{i}", T0 + i) for i in range(5)]
    )
    assert len({r.session_id for r in results if r}) == 1


async def test_a_gap_longer_than_the_session_gap_opens_a_new_session(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology(sessions={"gap": "24h"})
    first = await append_one(redis, topology, message("wamid.G1", T0))
    within = await append_one(redis, topology, message("wamid.G2", T0 + 24 * HOUR))
    after = await append_one(redis, topology, message("wamid.G3", T0 + 48 * HOUR + 1))
    assert first.session_id == within.session_id
    assert after.session_id != first.session_id


async def test_a_late_message_joins_the_current_session_which_never_moves_back(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology(sessions={"gap": "1h"})
    await append_one(redis, topology, message("wamid.L1", T0))
    current = await append_one(redis, topology, message("wamid.L2", T0 + 5 * HOUR))
    # Sent before the current session began, delivered late: it joins the current session
    # and does not move the session's clock backwards.
    late = await append_one(redis, topology, message("wamid.L3", T0 + HOUR))
    assert late.session_id == current.session_id
    next_one = await append_one(redis, topology, message("wamid.L4", T0 + 5 * HOUR + 1800))
    assert next_one.session_id == current.session_id


async def test_messages_in_one_call_share_or_split_sessions_in_order(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology(sessions={"gap": "1h"})
    results = await dedup_append(
        redis,
        topology,
        [
            message("wamid.O1", T0),
            message("wamid.O2", T0 + 10),
            message("wamid.O3", T0 + 2 * HOUR),
        ],
    )
    sessions = [r.session_id for r in results if r]
    assert sessions[0] == sessions[1] != sessions[2]


async def test_a_status_opens_no_session_and_carries_the_outbound_session(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology()
    (unknown,) = decode_notification(status_notification("wamid.OUT1", "sent", CUSTOMER, T0))
    result = await append_one(redis, topology, unknown)
    assert result.session_id == ""
    record = conversation_record_key(topology, CONVERSATION)
    assert await redis.hget(record, "sid") is None  # no session was opened

    opened = await append_one(redis, topology, message("wamid.IN1", T0))
    # What the sender records when it sends wamid.OUT2 in that session:
    await redis.hset(record, outbound_field("wamid.OUT2"), opened.session_id)
    (known,) = decode_notification(status_notification("wamid.OUT2", "delivered", CUSTOMER, T0 + 5))
    assert (await append_one(redis, topology, known)).session_id == opened.session_id
    assert await redis.hget(record, "last") == str(T0).encode()  # statuses never extend it


async def test_redelivery_appends_nothing_and_statuses_dedup_per_status(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology()
    item = message("wamid.D1", T0)
    first, again = await dedup_append(redis, topology, [item, item])
    assert first is not None and again is None
    assert await redis.xlen("zapstream:{p0}:messages") == 1
    assert await dedup_append(redis, topology, [item]) == [None]
    statuses = [
        decode_notification(status_notification("wamid.S", s, CUSTOMER, T0))[0]
        for s in ("sent", "delivered", "sent")
    ]
    results = await dedup_append(redis, topology, statuses)
    assert [r is not None for r in results] == [True, True, False]


async def test_script_survives_a_flushed_script_cache(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology(partitions=4)
    await redis.script_flush()
    items = [message(f"wamid.N{i}", T0, sender=f"1555000{i:04d}") for i in range(8)]
    results = await dedup_append(redis, topology, items)  # several partitions: the pipeline path
    assert all(results)
    await redis.script_flush()
    assert await dedup_append(redis, topology, items[:1]) == [None]  # the single-call path


async def test_partitions_put_each_conversation_under_its_own_tag(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology(partitions=4)
    items = [message(f"wamid.P{i}", T0, sender=f"1555000{i:04d}") for i in range(40)]
    await dedup_append(redis, topology, items)
    streams = [k.decode() async for k in redis.scan_iter(match="zapstream:*:messages")]
    assert sorted(streams) == [f"zapstream:{{p{p}}}:messages" for p in range(4)]
    assert sum([await redis.xlen(s) for s in streams]) == 40


async def test_nothing_is_written_when_a_key_has_the_wrong_type(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology()
    record = conversation_record_key(topology, "100000000000001:15550002222")
    await redis.set(record, "not a hash")
    good, bad = message("wamid.V1", T0), message("wamid.V2", T0, sender="15550002222")
    with pytest.raises(ResponseError, match="holds a string"):
        await dedup_append(redis, topology, [good, bad])
    # Validated before the first write: the good event of the same call is not in the log.
    assert await redis.exists("zapstream:{p0}:messages") == 0


async def test_dedup_records_are_small_and_pruned_when_expired(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology(dedup={"window": "1s"})
    record = conversation_record_key(topology, CONVERSATION)
    await dedup_append(redis, topology, [message(f"wamid.M{i}", T0 + i) for i in range(60)])
    assert await redis.object("encoding", record) == b"listpack"
    size = await redis.memory_usage(record)
    assert size is not None and size / 60 < 40, f"{size / 60:.1f} bytes per dedup record"

    fields_before = await redis.hlen(record)

    async def pruned() -> bool:
        # Appends after the window has passed prune the expired records once the record grows.
        await dedup_append(
            redis,
            topology,
            [message(f"wamid.X{i}-{await redis.hlen(record)}", T0 + 100) for i in range(10)],
        )
        return bool(await redis.hlen(record) < fields_before)

    await eventually(pruned, timeout=10, interval=0.2)


@pytest.mark.single_redis  # counts script calls in one server's INFO commandstats
async def test_batcher_coalesces_concurrent_appends_and_keeps_each_answer(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = make_topology()
    batcher = AppendBatcher(redis, topology, max_in_flight=1)
    items = [message(f"wamid.C{i}", T0 + i, sender=f"1555000{i % 5:04d}") for i in range(40)]
    await redis.config_resetstat()
    answers = await asyncio.gather(
        *(batcher.append([item], timeout=5) for item in items),
        batcher.append([items[3]], timeout=5),  # a redelivery inside the same burst
    )
    calls = int((await redis.info("commandstats"))["cmdstat_evalsha"]["calls"])
    assert calls < 40, f"{calls} script calls for 41 appends"
    assert all(a[0] is not None for a in answers[:40])
    assert answers[40] == [None]  # the duplicate, caught within the batch
    assert await redis.xlen("zapstream:{p0}:messages") == 40
    await batcher.close()


async def test_batcher_times_out_a_caller_when_redis_does_not_answer(
    own_redis: OwnRedis, make_topology: Callable[..., Topology]
) -> None:
    async with open_redis(own_redis.url) as client:
        batcher = AppendBatcher(client, make_topology(webhook={"append_timeout": "500ms"}))
        own_redis.pause()
        try:
            with pytest.raises(TimeoutError):
                await batcher.append([message("wamid.T1", T0)], timeout=0.5)
        finally:
            own_redis.resume()
        await batcher.close()
