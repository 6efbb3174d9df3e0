"""Where zapstream's time goes: each conversation's latency cut at the entries it left in the
log, read back from Redis after the drain.

An entry id's first part is the Redis clock in ms when it was appended, the clock the
generator and the stand-in share (one machine), so each conversation splits into:

    webhook   POST written -> message.received appended (HTTP, verify, decode, append)
    debounce  -> turn.ready appended (the debounce group's read and debounce.lua)
    respond   -> reply.generated appended (read, state, mark-read POST, rules, turns.lua)
    send      -> the reply at the stand-in (read, rate limits, send.lua, Graph API POST)

Entry ids have ms resolution: each stage's figure is good to about a millisecond.
"""

from __future__ import annotations

import math

import redis

from e2e_bench.percentiles import percentile
from e2e_bench.traffic import Post
from zapstream.envelope import decode_fields
from zapstream.events import Event, MessageReceived, ReplyGenerated, TurnReady
from zapstream.keys import stream_keys
from zapstream.topology import Topology

STAGES = ("webhook", "debounce", "respond", "send")
# The stream each stage ends in, and the event type it ends with there.
ENDS: dict[str, tuple[str, type[Event]]] = {
    "webhook": ("messages", MessageReceived),
    "debounce": ("turns", TurnReady),
    "respond": ("replies", ReplyGenerated),
}
XRANGE_COUNT = 10_000  # entries per XRANGE call


def appended_at(
    client: redis.Redis, topology: Topology, stream: str, kind: type[Event]
) -> dict[str, float]:
    """customer -> the time (s) its first event of `kind` was appended to `stream`."""
    found: dict[str, float] = {}
    for key in stream_keys(topology, stream):
        start = "-"
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
                key, start, "+", count=XRANGE_COUNT
            )
            for entry_id, fields in entries:
                event = decode_fields(fields)
                customer = getattr(event, "customer", "")
                if isinstance(event, kind) and customer not in found:
                    found[customer] = int(entry_id.split(b"-", 1)[0]) / 1000
            if len(entries) < XRANGE_COUNT:
                break
            start = "(" + entries[-1][0].decode()
    return found


def stage_percentiles(
    client: redis.Redis, topology: Topology, posts: list[Post], replies: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """Stage -> (p50 ms, p99 ms) over the conversations that got their reply; `replies` maps
    "+<customer>" to the reply's arrival at the stand-in."""
    ends = {name: appended_at(client, topology, *end) for name, end in ENDS.items()}
    spans: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for post in posts:
        marks = [post.sent]
        for name in ENDS:
            marks.append(ends[name].get(post.customer, math.nan))
        marks.append(replies.get(f"+{post.customer}", math.nan))
        if any(math.isnan(mark) for mark in marks):
            continue  # no reply, or an entry missing: nothing to cut
        for stage, begin, end in zip(STAGES, marks, marks[1:], strict=False):
            spans[stage].append(1000 * (end - begin))
    return {
        stage: (percentile(sorted(values), 0.50), percentile(sorted(values), 0.99))
        if values
        else (math.nan, math.nan)
        for stage, values in spans.items()
    }
