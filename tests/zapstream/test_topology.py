"""load_topology(): streams.yaml checked at start; every rejection names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.groups import HANDLERS
from zapstream.settings import ConfigError
from zapstream.topology import load_topology, parse_duration, parse_topology

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
streams:
  messages: {}
  statuses: {}
"""


def test_the_repository_streams_yaml_loads() -> None:
    topology = load_topology(ROOT / "streams.yaml")
    assert topology.dedup.window == 7 * 86400
    assert topology.sessions.gap == 86400
    assert topology.partitions == 1
    assert set(topology.groups) <= set(HANDLERS)  # every group has its handler


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300ms", 0.3), ("2s", 2), ("1.5m", 90), ("24h", 86400), ("7d", 604800), ("10", 10), (3, 3)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_group_settings_and_their_defaults() -> None:
    topology = parse_topology(
        MINIMAL + "groups: {g: {streams: [statuses, messages], backoff: {base: 500ms}, idle: 1m}}\n"
    )
    group = topology.groups["g"]
    assert group.streams == ("statuses", "messages")
    assert group.backoff.base == 0.5 and group.backoff.factor == 2 and group.idle == 60
    assert (group.concurrency, group.batch, group.max_failures) == (16, 100, 5)


def test_defaults_fill_what_the_file_leaves_out() -> None:
    topology = parse_topology(MINIMAL)
    assert topology.prefix == "zapstream" and topology.groups == {}
    assert topology.debounce.quiet == 2 and topology.debounce.max_wait == 10


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (MINIMAL + "retention: 3d\n", "retention", "unknown key"),
        (MINIMAL + "dedup: {windw: 7d}\n", "dedup.windw", "unknown key"),
        (MINIMAL + "partitions: two\n", "partitions", "Expected `int`"),
        (MINIMAL + "dedup: {window: 7 days}\n", "dedup.window", "expected a duration"),
        (MINIMAL + "dedup: {window: -1}\n", "dedup.window", "cannot be negative"),
        (MINIMAL + "sessions: {gap: 0s}\n", "sessions.gap", "longer than zero"),
        (MINIMAL + "partitions: 0\n", "partitions", "between 1 and 1024"),
        (
            MINIMAL + "groups: {g: {streams: [turns]}}\n",
            "groups.g.streams",
            "unknown stream `turns`",
        ),
        (MINIMAL + "groups: {g: {streams: []}}\n", "groups.g.streams", "at least one stream"),
        (MINIMAL + "groups: {g: {streams: [messages, messages]}}\n", "groups.g.streams", "twice"),
        (
            MINIMAL + "groups: {g: {streams: [messages], concurrency: 0}}\n",
            "groups.g.concurrency",
            "at least 1",
        ),
        (
            MINIMAL + "groups: {g: {streams: [messages], idle: soon}}\n",
            "groups.g.idle",
            "expected a duration",
        ),
        (MINIMAL + "groups: {g: {stream: [messages]}}\n", "groups.g.stream", "unknown key"),
        (MINIMAL + "groups: [debounce]\n", "groups", "expected a mapping"),
        ("- a\n- b\n", "(top level)", "expected a mapping"),
        (MINIMAL + "debounce: {quiet: 5s, max_wait: 1s}\n", "debounce.max_wait", "quiet"),
        (MINIMAL + "debounce: {policy: drop}\n", "debounce.policy", "Invalid enum value 'drop'"),
        ("streams: {messages: {}}\n", "streams", "`statuses` is required"),
        (MINIMAL + "  Bad_Name: {}\n", "streams.Bad_Name", "lowercase"),
        (MINIMAL + "rate_limits: {per_number: {rate: 0}}\n", "rate_limits.per_number", "rate"),
    ],
)
def test_each_kind_of_bad_file_names_file_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_topology(text, source="conf/streams.yaml")
    message = str(caught.value)
    assert message.startswith(f"conf/streams.yaml: {key}: "), message
    assert reason in message


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_topology("streams: [unclosed")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read"):
        load_topology(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            "streams: {messages: {retention: {}}, statuses: {}}",
            "streams.messages.retention",
            "set max_age",
        ),
        (
            "streams: {messages: {retention: {max_len: 0}}, statuses: {}}",
            "retention.max_len",
            "at least 1",
        ),
        (
            "streams: {messages: {retention: {max_age: soon}}, statuses: {}}",
            "retention.max_age",
            "duration",
        ),
        (
            "streams: {messages: {retention: {keep: 1}}, statuses: {}}",
            "retention.keep",
            "unknown key",
        ),
        (
            "trimming: {projections: [search]}\nstreams: {messages: {}, statuses: {}}",
            "trimming.projections",
            "unknown projection",
        ),
        (
            "trimming: {projections: [sessions]}\n"
            "streams: {messages: {retention: {max_len: 9}}, statuses: {}}",
            "streams.messages.retention",
            "must include `archive`",
        ),
    ],
)
def test_a_bad_retention_names_its_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_topology(text)
    assert key in str(raised.value) and reason in str(raised.value)


def test_retention_of_the_repository_file() -> None:
    topology = load_topology(Path(__file__).resolve().parents[2] / "streams.yaml")
    retention = topology.streams["messages"].retention
    assert retention is not None and retention.max_age == 7 * 86400
    assert "archive" in topology.trimming.projections
