"""`zapstream dlq list | requeue | drop`: the dead letters, one by one, by their ids.

An id is a dead-letter entry id as `dlq list` prints it. The same id may stand in the
dead-letter streams of several groups (or partitions): then the command refuses it and names
the `GROUP/ID` (or `GROUP/pN/ID`) forms that tell them apart. Each id is settled on its own:
an id that cannot be (not found, already requeued) is named on stderr after the others are
done, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import re
import sys

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from processors.deadletter import DeadLetter, Settled, drop, read_dead_letters, requeue
from zapstream.connections import open_redis
from zapstream.keys import partition_of
from zapstream.settings import Settings
from zapstream.tables import ago, table
from zapstream.topology import Topology

ERROR_WIDTH = 60  # characters of the error shown by `dlq list` (--json has it whole)
_ID = re.compile(r"^\d+-\d+$")
_PARTITION = re.compile(r"^p(\d+)$")

_REFUSALS = {
    "missing": "not found: no such dead letter, or already requeued or dropped",
    "trimmed": "its source entry is no longer in the stream (trimmed): it cannot be requeued",
    "pending": "the group holds its source entry already",
    "nogroup": "the group is not on its source stream any more",
}


class Ref(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter as named on the command line: `ID`, `GROUP/ID` or `GROUP/pN/ID`."""

    text: str
    id: str
    group: str | None = None
    partition: int | None = None


def parse_ref(text: str) -> Ref:
    """argparse's `type` for a dead-letter id; a malformed one is bad usage (exit 2)."""
    *scope, entry_id = text.split("/")
    partition = None
    if len(scope) == 2:
        found = _PARTITION.match(scope[1])
        if not found:
            raise argparse.ArgumentTypeError(f"{text!r}: expected GROUP/pN/ID")
        partition = int(found.group(1))
    if len(scope) > 2 or not _ID.match(entry_id) or (scope and not scope[0]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a dead-letter id (as `dlq list` prints it), GROUP/ID or "
            "GROUP/pN/ID"
        )
    return Ref(text=text, id=entry_id, group=scope[0] if scope else None, partition=partition)


async def dlq(settings: Settings, topology: Topology, args: argparse.Namespace) -> int:
    """Run `dlq list | requeue | drop`; the exit status (2: bad usage, 1: a failure)."""
    if args.action == "requeue" and bool(args.ids) == bool(args.all):
        print("zapstream dlq requeue: name dead-letter ids, or --all", file=sys.stderr)
        return 2
    if args.group is not None and args.group not in topology.groups:
        known = ", ".join(sorted(topology.groups)) or "none"
        print(f"zapstream: dlq: unknown group {args.group!r} (groups: {known})", file=sys.stderr)
        return 1
    try:
        async with open_redis(settings.redis_url) as redis:
            letters = await read_dead_letters(redis, topology, args.group)
            if args.action == "list":
                print(_render_json(letters) if args.json else _render(letters, topology))
                return 0
            return await _settle_all(redis, topology, args, letters)
    except (RedisError, TimeoutError) as err:
        print(f"zapstream: dlq: Redis: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


async def _settle_all(
    redis: Redis, topology: Topology, args: argparse.Namespace, letters: list[DeadLetter]
) -> int:
    """Settle each named dead letter in turn; 1 if any could not be, after the others."""
    act = requeue if args.action == "requeue" else drop
    chosen: list[tuple[str, DeadLetter | str]] = (
        [(_ref(letter, topology), letter) for letter in letters]
        if args.action == "requeue" and args.all
        else [(ref.text, _resolve(ref, letters, topology)) for ref in args.ids]
    )
    if not chosen:
        print(f"no dead letters{f' in group {args.group}' if args.group else ''}")
        return 0
    failed = 0
    for name, letter in chosen:
        if isinstance(letter, str):
            failed += 1
            print(f"zapstream: dlq {args.action}: {name}: {letter}", file=sys.stderr)
            continue
        settled = await act(redis, topology, letter)
        if settled.event_id:
            print(_describe(name, letter, settled))
        else:
            failed += 1
            reason = _REFUSALS[settled.outcome]
            print(f"zapstream: dlq {args.action}: {name}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _resolve(ref: Ref, letters: list[DeadLetter], topology: Topology) -> DeadLetter | str:
    """The one dead letter `ref` names, or why there is none."""
    found = [
        letter
        for letter in letters
        if letter.id == ref.id
        and (ref.group is None or letter.group == ref.group)
        and (ref.partition is None or partition_of(letter.key) == ref.partition)
    ]
    if not found:
        return _REFUSALS["missing"]
    if len(found) > 1:
        names = ", ".join(_ref(letter, topology, qualified=True) for letter in found)
        return f"in several dead-letter streams: name one of {names}"
    return found[0]


def _ref(letter: DeadLetter, topology: Topology, *, qualified: bool = False) -> str:
    if topology.partitions > 1:
        return f"{letter.group}/p{partition_of(letter.key)}/{letter.id}"
    return f"{letter.group}/{letter.id}" if qualified else letter.id


def _describe(name: str, letter: DeadLetter, settled: Settled) -> str:
    """What was done to the dead letter `name`, with the operator event that logs it."""
    if settled.outcome == "requeued":
        return (
            f"requeued {name}: {letter.stream} {letter.entry_id} is pending again for "
            f"group {letter.group} (deadletter.requeued {settled.event_id})"
        )
    return (
        f"dropped {name}: {letter.stream} {letter.entry_id} of group {letter.group} "
        f"(deadletter.dropped {settled.event_id})"
    )


def _render_json(letters: list[DeadLetter]) -> str:
    return msgspec.json.encode(letters).decode()


def _render(letters: list[DeadLetter], topology: Topology) -> str:
    if not letters:
        return "no dead letters"
    partitioned = topology.partitions > 1
    header = ["id", "group", "stream", "entry", "type", "session", "code", "fails", "age", "error"]
    rows = [header if not partitioned else ["id", "partition", *header[1:]]]
    for letter in letters:
        row = [
            letter.id,
            letter.group,
            letter.stream,
            letter.entry_id,
            letter.type,
            letter.session_id or "-",
            letter.code,
            str(letter.failures),
            ago(letter.age_s),
            _shorten(letter.error),
        ]
        if partitioned:
            row.insert(1, f"p{partition_of(letter.key)}")
        rows.append(row)
    return table(rows)


def _shorten(error: str) -> str:
    line = " ".join(error.split())
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 3] + "..."
