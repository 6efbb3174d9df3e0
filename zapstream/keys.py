"""Every Redis key, stream and group name zapstream uses, with its hash tag.

Layout (prefix `zapstream`, partition 0):

    zapstream:{p0}:messages                         stream: message.received, message.rejected
    zapstream:{p0}:statuses                         stream: status.updated
    zapstream:{p0}:conv:<phone_number_id>:<customer> hash: the conversation record (session
                                                     state and dedup records, see append.lua)
    zapstream:{p0}:alive:<group>:<consumer>         string with a TTL: the consumer's heartbeat
    zapstream:{p0}:failures:<group>                 hash: entry id -> handler failures so far
    zapstream:{p0}:dead:<group>                     stream: the group's dead letters
    zapstream:{p0}:burst:<session_id>               sorted set: messages not yet in a turn
    zapstream:{p0}:due                              sorted set: session -> when its turn is due
    zapstream:{p0}:session:<session_id>             hash: the session's turns (cut, answered)
    zapstream:{p0}:context:<session_id>             list: earlier turns, for the AI (bounded)
    zapstream:{p0}:reply:<session_id>:<turn_id>     string: a completed answer, never regenerated
    zapstream:{p0}:typing:<session_id>:<turn_id>    string with a TTL: typing shown for the turn
    zapstream:{p0}:send:<reply_id>#<part>           hash: a part's idempotency record (send.py)
    zapstream:{p0}:outcome:<reply_id>               string: the reply's outcome, appended once
    zapstream:{p0}:doubt                            sorted set: parts in doubt -> since (ms)
    zapstream:{p0}:held                             hash: sessions held by a human -> details
    zapstream:{p0}:pair:<phone_number_id>:<customer> string: the customer's pair-limit bucket
    zapstream:rate:<phone_number_id>                string: the business number's send bucket
    zapstream:paused                                string with a TTL: why sending is paused
    zapstream:projections                           hash: `<projection>:<stream key>` -> the
                                                     projection's checkpoint (its mirror)

All keys of one partition share the hash tag `{pN}`, so one Lua script may touch them together,
also on Redis Cluster. A conversation's partition is `partition_for(conversation, partitions)`:
changing the partition count changes only the tag.
"""

from __future__ import annotations

import hashlib
import zlib

from zapstream.topology import Topology


def conversation_key(phone_number_id: str, customer: str) -> str:
    """A conversation: the business number and the customer (wa_id, else the BSUID)."""
    return f"{phone_number_id}:{customer}"


def partition_for(conversation: str, partitions: int) -> int:
    """Stable across processes and machines (CRC-32, not Python's salted hash())."""
    return zlib.crc32(conversation.encode("utf-8")) % partitions


def conversation_id(conversation: str) -> str:
    """A short, stable id for a conversation: 12 hex digits of its BLAKE2b digest."""
    return hashlib.blake2b(conversation.encode("utf-8"), digest_size=6).hexdigest()


def hash_tag(partition: int) -> str:
    return f"{{p{partition}}}"


def stream_key(topology: Topology, stream: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:{stream}"


def stream_keys(topology: Topology, stream: str) -> list[str]:
    """The stream's key in every partition, partition 0 first."""
    return [stream_key(topology, stream, p) for p in range(topology.partitions)]


def conversation_record_key(
    topology: Topology, conversation: str, partition: int | None = None
) -> str:
    """The conversation's record; pass its partition when already known."""
    if partition is None:
        partition = partition_for(conversation, topology.partitions)
    return f"{topology.prefix}:{hash_tag(partition)}:conv:{conversation}"


def partition_of(key: str) -> int:
    """The partition of a key built here, read back from its hash tag."""
    start = key.index("{p") + 2
    return int(key[start : key.index("}", start)])


def alive_key(topology: Topology, group: str, consumer: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:alive:{group}:{consumer}"


def failures_key(topology: Topology, group: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:failures:{group}"


def dead_letter_key(topology: Topology, group: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:dead:{group}"


def burst_key(topology: Topology, session_id: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:burst:{session_id}"


def due_key(topology: Topology, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:due"


def session_key(topology: Topology, session_id: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:session:{session_id}"


def context_key(topology: Topology, session_id: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:context:{session_id}"


def reply_key(topology: Topology, session_id: str, turn_id: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:reply:{session_id}:{turn_id}"


def typing_key(topology: Topology, session_id: str, turn_id: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:typing:{session_id}:{turn_id}"


def part_id(reply_id: str, part: int) -> str:
    """A part of a reply: its idempotency key and its `biz_opaque_callback_data`."""
    return f"{reply_id}#{part}"


def send_key(topology: Topology, part: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:send:{part}"


def outcome_key(topology: Topology, reply_id: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:outcome:{reply_id}"


def doubt_key(topology: Topology, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:doubt"


def held_key(topology: Topology, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:held"


def pair_key(topology: Topology, conversation: str, partition: int) -> str:
    return f"{topology.prefix}:{hash_tag(partition)}:pair:{conversation}"


def rate_key(topology: Topology, phone_number_id: str) -> str:
    return f"{topology.prefix}:rate:{phone_number_id}"


def paused_key(topology: Topology) -> str:
    return f"{topology.prefix}:paused"


def projections_key(topology: Topology) -> str:
    """The mirror of every projection's checkpoint, which trimming reads (no hash tag: it is
    never used in a script with a stream)."""
    return f"{topology.prefix}:projections"
