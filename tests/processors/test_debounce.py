"""Debounce: a customer's burst becomes one turn, timed on the entries' own times.

Windows here are 300 ms quiet / 1.5 s max wait; bursts use gaps of at most 60 ms inside and
at least 1.5 s between (margins of 5x).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from redis.asyncio import Redis

from tests.processors.conversations import (
    BUSINESS,
    STATUSES,
    TURNS,
    add,
    count_turns,
    debouncing,
    message,
    pace,
    turns,
    windows,
)
from tests.waiting import eventually
from zapstream.envelope import decode_fields
from zapstream.events import StatusUpdated, TurnReady
from zapstream.topology import Topology


async def test_three_messages_in_a_window_are_one_turn_in_whatsapp_order(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology)
    async with debouncing(redis, topology):
        # Delivered out of WhatsApp's order: the turn lists them by WhatsApp timestamp.
        for n, ts in ((2, 1767261602), (1, 1767261601), (3, 1767261603)):
            await add(redis, message(n, ts=ts))
            await pace(0.02)
        await eventually(lambda: count_turns(redis, 1), timeout=10)
    (turn,) = await turns(redis)
    assert turn.turn_id == "1" and turn.session_id == "sess-15550001111"
    assert turn.message_ids == ["wamid.15550001111.1", "wamid.15550001111.2", "wamid.15550001111.3"]
    assert (turn.phone_number_id, turn.customer) == (BUSINESS, "15550001111")
    assert len(turn.entry_ids) == 3


async def test_two_messages_a_window_apart_are_two_turns(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology)
    async with debouncing(redis, topology):
        await add(redis, message(1))
        await pace(1.5)
        await add(redis, message(2))
        await eventually(lambda: count_turns(redis, 2), timeout=10)
    assert [(t.turn_id, t.message_ids) for t in await turns(redis)] == [
        ("1", ["wamid.15550001111.1"]),
        ("2", ["wamid.15550001111.2"]),
    ]


async def test_a_customer_who_never_pauses_gets_a_turn_at_max_wait(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology)
    started = time.monotonic()
    async with debouncing(redis, topology):
        n = 0
        while time.monotonic() - started < 3.2:  # a message every 60 ms, never a quiet 300 ms
            n += 1
            await add(redis, message(n))
            await pace(0.06)
        await eventually(lambda: count_turns(redis, 2), timeout=10)
    cut = await turns(redis)
    assert len(cut) >= 2
    for turn in cut[:2]:
        first, last = (int(e.split("-")[0]) for e in (turn.entry_ids[0], turn.entry_ids[-1]))
        assert last - first < 1500  # cut at max wait, though messages kept coming
    seen = [m for turn in cut for m in turn.message_ids]
    assert len(seen) == len(set(seen))  # no message in two turns


BURSTS = [  # (offset ms, message number): gaps of 40 ms within a burst, >= 1.5 s between
    (0, 1),
    (40, 2),
    (80, 3),
    (2000, 4),
    (4000, 5),
    (4040, 6),
]
EXPECTED = [["1", "2", "3"], ["4"], ["5", "6"]]


async def test_a_group_far_behind_cuts_the_same_turns_as_a_live_one(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology)
    # Written a minute ago, while the group was stopped.
    base = int(time.time() * 1000) - 60_000
    for offset, n in BURSTS:
        await add(redis, message(n), at_ms=base + offset)
    async with debouncing(redis, topology):
        await eventually(lambda: count_turns(redis, 3), timeout=10)
    behind = [[m.rsplit(".", 1)[1] for m in t.message_ids] for t in await turns(redis)]
    assert behind == EXPECTED

    await redis.flushdb()
    async with debouncing(redis, topology):  # the same burst, live
        previous = 0
        for offset, n in BURSTS:
            await pace((offset - previous) / 1000)
            previous = offset
            await add(redis, message(n))
        await eventually(lambda: count_turns(redis, 3), timeout=10)
    live = [[m.rsplit(".", 1)[1] for m in t.message_ids] for t in await turns(redis)]
    assert live == EXPECTED


async def test_two_workers_racing_to_close_windows_emit_each_turn_once(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology)
    base = int(time.time() * 1000) - 30_000
    for session in range(60):
        for n in range(3):
            await add(
                redis,
                message(n, customer=f"1555{session:07d}"),
                at_ms=base + session * 200 + n * 40,
            )
    async with debouncing(redis, topology, workers=2):
        await eventually(lambda: count_turns(redis, 60), timeout=15)
        # Let both keep ticking over the closed windows: nothing more may be emitted.
        await eventually(lambda: _nothing_due(redis), timeout=5)
    cut = await turns(redis)
    assert len(cut) == 60
    assert len({t.session_id for t in cut}) == 60
    assert all(len(t.message_ids) == 3 and t.turn_id == "1" for t in cut)


async def _nothing_due(redis: Redis) -> bool:
    return int(await redis.zcard("zapstream:{p0}:due")) == 0


async def test_reactions_and_statuses_neither_extend_nor_open_a_turn(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology)
    base = int(time.time() * 1000) - 10_000
    await add(redis, message(1), at_ms=base)
    # 250 ms later a reaction and a status: counted, they would carry the window past m2.
    await add(redis, message(2, kind="reaction"), at_ms=base + 250)
    status = StatusUpdated(
        session_id="sess-15550001111",
        message_id="wamid.out",
        status="read",
        timestamp=1,
        phone_number_id=BUSINESS,
        customer="15550001111",
        data="{}",
    )
    await add(redis, status, at_ms=base + 260, stream=STATUSES)
    await add(redis, message(3), at_ms=base + 500)
    async with debouncing(redis, topology):
        await eventually(lambda: count_turns(redis, 2), timeout=10)
    assert [t.message_ids for t in await turns(redis)] == [
        ["wamid.15550001111.1"],
        ["wamid.15550001111.3"],
    ]


async def test_windows_survive_a_worker_that_stops_before_closing_them(
    redis: Redis, make_topology: Callable[..., Topology]
) -> None:
    topology = windows(make_topology, quiet="2s", max_wait="5s")
    async with debouncing(redis, topology):
        for n in range(3):
            await add(redis, message(n))
        await eventually(lambda: _burst_size(redis, 3), timeout=10)
    assert not await redis.exists(TURNS)  # stopped with the window open
    async with debouncing(redis, topology):  # another worker closes it when due
        await eventually(lambda: count_turns(redis, 1), timeout=10)
    assert len((await turns(redis))[0].message_ids) == 3


async def _burst_size(redis: Redis, count: int) -> bool:
    return int(await redis.zcard("zapstream:{p0}:burst:sess-15550001111")) == count


def test_turn_ready_written_by_the_script_reads_as_the_event_type() -> None:
    fields = {
        b"type": b"turn.ready",
        b"v": b"1",
        b"session_id": b"s",
        b"turn_id": b"2",
        b"message_ids": b'["a","b"]',
        b"entry_ids": b'["1-0","2-0"]',
        b"phone_number_id": b"1",
        b"customer": b"2",
    }
    event = decode_fields(fields)
    assert event == TurnReady(
        session_id="s",
        turn_id="2",
        message_ids=["a", "b"],
        entry_ids=["1-0", "2-0"],
        phone_number_id="1",
        customer="2",
    )
    assert set(msgspec.to_builtins(event)) <= {k.decode() for k in fields} | {"type"}
