"""Failures and dead letters: the backoff schedule, failure counts, the dead-letter stream.

A handler failure is counted per entry (apart from deliveries: an entry that only waited is
not a failure). At the group's max_failures, or at once for a Reject, the entry moves to the
group's dead-letter stream with its full original fields, the group, the error and both
counts, and is acked, in one fenced script (fail.lua).

`zapstream dlq` reads them (read_dead_letters) and settles each once, logging the action as
an event of the `operations` stream in the same script (dlq.lua): a requeue makes the source
entry pending again for the failing group alone; a drop deletes the dead letter.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from processors.liveness import CLAIM_MIN_IDLE_MS
from zapstream.envelope import encode_fields
from zapstream.events import DeadLetterDropped, DeadLetterRequeued, Event
from zapstream.keys import dead_letter_key, failures_key, partition_of, stream_key
from zapstream.scripts import Script
from zapstream.settings import ConfigError
from zapstream.topology import Backoff, Topology

FAIL = Script(Path(__file__).with_name("fail.lua"))
DLQ = Script(Path(__file__).with_name("dlq.lua"))
OPERATIONS = "operations"  # the stream where each operator action is logged
# Owns a requeued entry until a live consumer of the group takes it over: it never beats, so
# the first reclaim pass takes the entry (dlq.lua gives it CLAIM_MIN_IDLE_MS of idle time).
REQUEUE_CONSUMER = "dlq-requeue"
REDIS_TIMEOUT_S = 5.0
PAGE = 1000  # dead letters read per XRANGE


class FailureRecord(msgspec.Struct, frozen=True, kw_only=True):
    failures: int
    dead_letter_id: str  # empty unless the entry was dead-lettered


def backoff_delay(backoff: Backoff, failures: int) -> float:
    """Seconds before retry number `failures` (1-based): base * factor^(n-1), at most max."""
    try:
        delay = backoff.base * backoff.factor ** max(0, failures - 1)
    except OverflowError:  # factor^(n-1) past a float's range (max_failures in the thousands)
        return float(backoff.max)
    return float(min(backoff.max, delay))


async def record_failure(
    redis: Redis,
    topology: Topology,
    *,
    group: str,
    consumer: str,
    key: str,
    stream: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    error: str,
    deliveries: int,
    max_failures: int,
) -> FailureRecord | None:
    """Count one failure (max_failures 0: dead-letter now); None if the entry is not ours."""
    partition = partition_of(key)
    keys = [
        key,
        failures_key(topology, group, partition),
        dead_letter_key(topology, group, partition),
    ]
    args: list[bytes | str | int] = [
        group,
        consumer,
        entry_id,
        max_failures,
        error,
        deliveries,
        stream,
        error_code(error),
    ]
    for name, value in fields.items():
        args += [name, value]
    result = await FAIL.run(redis, keys, args)
    if result == -1:
        return None
    failures, dead = result
    return FailureRecord(failures=int(failures), dead_letter_id=dead.decode() if dead else "")


# GraphError's text (processors/graph.py), also inside a Reject's or a SendFailed's.
_WHATSAPP_CODE = re.compile(r"WhatsApp error (\d+) \(HTTP")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def error_code(error: str) -> str:
    """The cause of a failure in a word, from the runtime's error text, for counting dead
    letters by cause: `whatsapp:<code>`, `timeout`, `undecodable`, `rejected`, or the
    exception's class name ("error" when the text names none)."""
    found = _WHATSAPP_CODE.search(error)
    if found:
        return f"whatsapp:{found.group(1)}"
    if error.startswith("undecodable entry:"):
        return "undecodable"
    if error.startswith("TimeoutError: handler ran past"):  # the runtime's own deadline
        return "timeout"
    if error.startswith("rejected:"):
        return "rejected"
    name = error.split(":", 1)[0].strip()
    return name if _NAME.match(name) else "error"


class DeadLetter(msgspec.Struct, kw_only=True):
    id: str  # the dead-letter entry id
    group: str
    key: str  # the dead-letter stream's Redis key
    stream: str  # the stream the entry came from
    entry_id: str  # its id there
    type: str  # the event type of the original entry
    session_id: str
    error: str
    code: str  # error_code(error), stored by fail.lua since it has one
    failures: int
    deliveries: int
    consumer: str
    age_s: float  # now (Redis TIME) minus the dead-letter id's milliseconds


async def read_dead_letters(
    redis: Redis, topology: Topology, group: str | None = None
) -> list[DeadLetter]:
    """The dead letters of `group` (default: every group of the topology), in every
    partition, oldest first; ages by Redis's clock, the one that stamped the ids."""
    groups = [group] if group is not None else list(topology.groups)
    async with asyncio.timeout(REDIS_TIMEOUT_S):
        seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    letters = []
    for name in groups:
        for partition in range(topology.partitions):
            key = dead_letter_key(topology, name, partition)
            for entry_id, fields in await _read_stream(redis, key):
                letters.append(_dead_letter(key, name, entry_id, fields, now_ms))
    return sorted(letters, key=lambda letter: (_order(letter.id), letter.group, letter.key))


async def _read_stream(redis: Redis, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            page: Any = await redis.xrange(key, min=start, count=PAGE)
        entries += [(_text(entry_id), fields) for entry_id, fields in page]
        if len(page) < PAGE:
            return entries
        start = f"({entries[-1][0]}"


def _dead_letter(
    key: str, group: str, entry_id: str, fields: dict[bytes, bytes], now_ms: int
) -> DeadLetter:
    text = {_text(name): _text(value) for name, value in fields.items()}
    error = text.get("dlq_error", "")
    return DeadLetter(
        id=entry_id,
        group=text.get("dlq_group", group),
        key=key,
        stream=text.get("dlq_stream", ""),
        entry_id=text.get("dlq_entry_id", ""),
        type=text.get("type", ""),
        session_id=text.get("session_id", ""),
        error=error,
        # Dead letters written before fail.lua stored a code get it from their error.
        code=text.get("dlq_code") or error_code(error),
        failures=_number(text.get("dlq_failures", "")),
        deliveries=_number(text.get("dlq_deliveries", "")),
        consumer=text.get("dlq_consumer", ""),
        age_s=max(0.0, (now_ms - _order(entry_id)[0]) / 1000),
    )


Outcome = Literal["requeued", "dropped", "missing", "trimmed", "pending", "nogroup"]


class Settled(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    event_id: str = ""  # the operator event's entry id in `operations`, when done


async def requeue(redis: Redis, topology: Topology, letter: DeadLetter) -> Settled:
    """Send a dead letter back to the group that failed it, once: its source entry becomes
    pending again for that group alone, and deadletter.requeued is appended, in one step.
    Nothing changes unless the outcome is `requeued`."""
    event = _operator_event(DeadLetterRequeued, letter)
    return await _settle(redis, topology, letter, "requeue", event)


async def drop(redis: Redis, topology: Topology, letter: DeadLetter) -> Settled:
    """Delete a dead letter for good and append deadletter.dropped, in one step."""
    return await _settle(
        redis, topology, letter, "drop", _operator_event(DeadLetterDropped, letter)
    )


def _operator_event(
    kind: type[DeadLetterRequeued] | type[DeadLetterDropped], letter: DeadLetter
) -> DeadLetterRequeued | DeadLetterDropped:
    """The event an action appends: which dead letter, of which entry, and why it died."""
    return kind(
        session_id=letter.session_id,
        group=letter.group,
        dead_letter_id=letter.id,
        stream=letter.stream,
        entry_id=letter.entry_id,
        error=letter.error,
        code=letter.code,
    )


_DONE: dict[str, Outcome] = {"requeue": "requeued", "drop": "dropped"}
_REFUSED: dict[bytes, Outcome] = {
    b"missing": "missing",
    b"trimmed": "trimmed",
    b"pending": "pending",
    b"nogroup": "nogroup",
}


async def _settle(
    redis: Redis, topology: Topology, letter: DeadLetter, action: str, event: Event
) -> Settled:
    if OPERATIONS not in topology.streams:
        raise ConfigError(
            f"streams.yaml: streams: declare the stream `{OPERATIONS}`: "
            "every dlq action is logged there"
        )
    partition = partition_of(letter.key)
    keys = [
        letter.key,
        stream_key(topology, letter.stream, partition),
        stream_key(topology, OPERATIONS, partition),
    ]
    args: list[str | int] = [
        action,
        letter.id,
        letter.group,
        letter.entry_id,
        REQUEUE_CONSUMER,
        CLAIM_MIN_IDLE_MS,
    ]
    for name, value in encode_fields(event).items():
        args += [name, value]
    async with asyncio.timeout(REDIS_TIMEOUT_S):
        status, *event_id = await DLQ.run(redis, keys, args)
    if status != b"done":
        return Settled(outcome=_REFUSED[status])
    return Settled(outcome=_DONE[action], event_id=_text(event_id[0]))


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _number(value: str) -> int:
    return int(value) if value.isdigit() else 0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
