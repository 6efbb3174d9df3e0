"""The bench's own Redis database: connect to it, flush it, read what was appended to it."""

from __future__ import annotations

import time

import redis

from zapstream.keys import stream_keys
from zapstream.topology import Topology


def connect(url: str) -> redis.Redis:
    """A synchronous client on the bench's database (the db number of `url`)."""
    return redis.Redis.from_url(url)


def flush(client: redis.Redis) -> None:
    """FLUSHDB of the bench's database alone, synchronously: no other database is touched."""
    client.flushdb(asynchronous=False)


def appended_messages(client: redis.Redis, topology: Topology) -> int:
    """Entries in the `messages` stream, over every partition."""
    return sum(client.xlen(key) for key in stream_keys(topology, "messages"))


def wait_for_other_clients_to_leave(client: redis.Redis, timeout: float = 5.0) -> None:
    """Return once no client but this one is on the bench's database, or after `timeout`.

    A closed pool's connections are freed by Redis a moment later; their buffers would count
    in a used_memory reading taken before.
    """
    own = client.client_id()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others = [c for c in client.client_list() if int(c["db"]) == db and int(c["id"]) != own]
        if not others:
            return
        time.sleep(0.02)  # the polling interval
