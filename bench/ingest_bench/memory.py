"""Redis bytes per message: the log's stream entries and conversation records, against the
naive design's one `SET dedup:<wamid> 1 EX 604800` key per message.

Each used_memory figure is what Redis frees when the thing is deleted, read just before and
just after (INFO is server-wide: readings apart by seconds would count other clients' work on
other databases); FLUSHDB frees the key tables as well. MEMORY USAGE cross-checks them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgspec
import redis

from ingest.append import dedup_append
from ingest.payload import Inbound, decode_notification
from ingest_bench import benchdb
from ingest_bench.appends import loop_factory
from ingest_bench.corpus import build_body, wamid_for
from ingest_bench.options import Options
from ingest_bench.progress import log_progress
from zapstream.connections import open_redis
from zapstream.keys import stream_keys
from zapstream.topology import Topology

# The naive design keeps a dedup key as long as Meta retries: 7 days.
SET_KEY_TTL_S = 604800


class MemoryFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Redis bytes for `messages` messages in the log, and as the naive design's SET keys."""

    messages: int
    conversations: int
    stream_bytes: int = 0  # used_memory freed by deleting the streams
    stream_usage_bytes: int = 0  # MEMORY USAGE of the streams
    record_bytes: int = 0  # used_memory freed by flushing the conversation records
    record_usage_bytes: int = 0  # MEMORY USAGE of the conversation records, summed
    dedup_field_bytes: int = 0  # how much MEMORY USAGE drops when the dedup fields are deleted
    set_key_bytes: int = 0  # used_memory freed by flushing one naive SET key per message


# Events per append.lua call while filling the log: the figures do not depend on it.
FILL_BATCH = 200


def used_memory(client: redis.Redis) -> int:
    """INFO memory's used_memory, once the connections of closed pools are gone."""
    benchdb.wait_for_other_clients_to_leave(client)
    return int(client.info("memory")["used_memory"])


def memory_usage(client: redis.Redis, keys: list[bytes]) -> int:
    """MEMORY USAGE of `keys`, summed, every nested value counted (SAMPLES 0)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(size or 0 for size in pipe.execute())


def delete_dedup_fields(client: redis.Redis, records: list[bytes]) -> None:
    """HDEL every dedup record (`d` and an 8-byte digest) from the conversation records."""
    pipe = client.pipeline(transaction=False)
    for key in records:
        pipe.hkeys(key)
    fields_of = pipe.execute()
    for key, fields in zip(records, fields_of, strict=True):
        dedup = [f for f in fields if len(f) == 9 and f[:1] == b"d"]
        if dedup:
            pipe.hdel(key, *dedup)
    pipe.execute()


def conversation_bodies(customers: int, messages_each: int) -> Iterator[bytes]:
    """`customers` conversations of `messages_each` messages a minute apart, interleaved."""
    start = int(time.time()) - messages_each * 60
    number = 0
    for message in range(messages_each):
        for customer in range(customers):
            yield build_body(number, customer=customer, timestamp=start + 60 * message,
                             run="mem")
            number += 1


async def fill_log(redis_url: str, topology: Topology, items: list[Inbound]) -> None:
    """dedup_append every item, FILL_BATCH per call, in order."""
    async with open_redis(redis_url) as client:
        for start in range(0, len(items), FILL_BATCH):
            results = await dedup_append(client, topology, items[start : start + FILL_BATCH])
            if not all(results):
                raise RuntimeError("a message of the memory run was taken for a duplicate")


def measure_log(options: Options, topology: Topology) -> MemoryFigures:
    """Append customers x messages_each messages on a flushed database, then free the streams,
    then the conversation records, reading used_memory around each."""
    client = benchdb.connect(options.redis_url)
    bodies = conversation_bodies(options.memory_customers, options.memory_messages_each)
    items = [item for body in bodies for item in decode_notification(body)]
    benchdb.flush(client)
    log_progress(f"memory: appending {len(items):,} messages in "
                 f"{options.memory_customers:,} conversations")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(fill_log(options.redis_url, topology, items))
    streams = [key.encode() for key in stream_keys(topology, "messages")]
    records = list(client.scan_iter(match=f"{topology.prefix}:*:conv:*", count=1000))
    stream_usage = memory_usage(client, streams)
    record_usage = memory_usage(client, records)

    with_streams = used_memory(client)
    client.delete(*streams)
    without_streams = used_memory(client)
    delete_dedup_fields(client, records)
    dedup_usage = record_usage - memory_usage(client, records)
    benchdb.flush(client)
    empty = used_memory(client)
    return MemoryFigures(
        messages=len(items), conversations=len(records),
        stream_bytes=with_streams - without_streams, stream_usage_bytes=stream_usage,
        record_bytes=without_streams - empty, record_usage_bytes=record_usage,
        dedup_field_bytes=dedup_usage,
    )


def measure_set_keys(options: Options, keys: int) -> int:
    """used_memory freed by flushing `keys` naive dedup keys, `SET dedup:<wamid> 1 EX 604800`."""
    client = benchdb.connect(options.redis_url)
    benchdb.flush(client)
    log_progress(f"memory: {keys:,} naive SET dedup:<wamid> 1 EX {SET_KEY_TTL_S} keys")
    pipe = client.pipeline(transaction=False)
    for number in range(keys):
        wamid = wamid_for(number, customer=number % options.memory_customers, run="set")
        pipe.set(f"dedup:{wamid}", 1, ex=SET_KEY_TTL_S)
        if len(pipe) == 1000:
            pipe.execute()
    pipe.execute()
    with_keys = used_memory(client)
    benchdb.flush(client)
    return with_keys - used_memory(client)


def bench_memory(options: Options, topology: Topology) -> MemoryFigures:
    """The log's bytes per message, and the naive design's for as many messages."""
    figures = measure_log(options, topology)
    set_key_bytes = measure_set_keys(options, figures.messages)
    return msgspec.structs.replace(figures, set_key_bytes=set_key_bytes)
