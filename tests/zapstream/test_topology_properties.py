"""Properties of parse_topology() over hostile streams.yaml files: each is a Topology or a
ConfigError naming file, key and reason; no KeyError, TypeError or ValueError gets out."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.documents import DocPath, at, paths
from zapstream.settings import ConfigError
from zapstream.topology import Topology, parse_duration, parse_topology

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "conf/streams.yaml"
BASE: dict[str, Any] = yaml.safe_load((ROOT / "streams.yaml").read_text())
# `conf/streams.yaml: KEY: REASON`, or the YAML parser's own complaint.
ERROR = re.compile(rf"^{re.escape(SOURCE)}: (not valid YAML: \S|(?P<key>.+?): \S)", re.S)

# Mappings whose keys are names we choose (a new key is a new stream or group, not a typo).
NAMED = {("streams",), ("groups",)}


def parse(text: str | bytes) -> Topology | ConfigError:
    """parse_topology's answer: ConfigError is the only exception it may raise."""
    try:
        topology = parse_topology(text, source=SOURCE)
    except ConfigError as err:
        assert ERROR.match(str(err)), str(err)
        return err
    assert_numbers_bounded(msgspec.to_builtins(topology, enc_hook=float))
    return topology


def assert_numbers_bounded(value: object) -> None:
    """What Redis, Lua and asyncio's timers can take: finite floats, 64-bit integers."""
    if isinstance(value, dict):
        for item in value.values():
            assert_numbers_bounded(item)
    elif isinstance(value, list):
        for item in value:
            assert_numbers_bounded(item)
    elif isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, int):
        assert -(2**63) < value < 2**63, value


def dotted(path: DocPath) -> str:
    """A path as ConfigError writes it: `groups.send.streams[0]`."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def key_of(error: ConfigError) -> str:
    match = ERROR.match(str(error))
    assert match
    return match.group("key") or ""


# --- strategies ------------------------------------------------------------------------------

KEYS = sorted(
    {"streams", "groups", "messages", "statuses", "window", "gap", "max_body", "quiet"}
    | {"max_wait", "policy", "rate", "per", "burst", "retention", "max_age", "max_len"}
    | {"backoff", "base", "factor", "max", "concurrency", "batch", "idle", "prefix"}
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # inf and NaN included
    | st.text(max_size=20)
    | st.sampled_from(["2s", "300ms", "-1s", "0", "1e400", "9" * 40 + "d", ".inf", "7 days"])
)
keys = st.sampled_from(KEYS) | st.text(max_size=10) | st.integers() | st.none()
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


BELOW = paths(BASE)[1:]  # every path but the document itself
LEAVES = [p for p in BELOW if not isinstance(at(BASE, p), dict)]
SETTINGS_MAPPINGS = [()] + [p for p in BELOW if isinstance(at(BASE, p), dict) and p not in NAMED]


def with_value(path: DocPath, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    at(document, path[:-1])[path[-1]] = value
    return document


# --- properties ------------------------------------------------------------------------------


def test_the_base_document_is_the_repository_file() -> None:
    assert isinstance(parse(yaml.safe_dump(BASE)), Topology)


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_topology_or_a_config_error(text: str) -> None:
    parse(text)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_topology_or_a_config_error(data: bytes) -> None:
    parse(data)


@given(yaml_values)
def test_arbitrary_yaml_is_a_topology_or_a_config_error(document: object) -> None:
    parse(yaml.safe_dump(document))


@given(st.dictionaries(st.sampled_from(sorted(BASE)), yaml_values, max_size=4))
def test_arbitrary_sections_are_a_topology_or_a_config_error(
    sections: dict[str, object],
) -> None:
    parse(yaml.safe_dump({**copy.deepcopy(BASE), **sections}))


@given(st.sampled_from(LEAVES), st.sampled_from([{"zz": 1}, {}]))
def test_a_mapping_where_a_value_belongs_names_that_key(path: DocPath, value: object) -> None:
    result = parse(yaml.safe_dump(with_value(path, value)))
    assert isinstance(result, ConfigError)
    assert key_of(result) == dotted(path), str(result)


@given(st.sampled_from(SETTINGS_MAPPINGS), st.text(max_size=12).map(lambda t: "zz" + t))
def test_an_unknown_key_is_named(path: DocPath, name: str) -> None:
    document = copy.deepcopy(BASE)
    section = at(document, path)
    if name in section:
        return
    section[name] = 1
    result = parse(yaml.safe_dump(document))
    assert isinstance(result, ConfigError)
    assert key_of(result) == dotted((*path, name)), str(result)
    assert str(result).endswith("unknown key")


@given(st.sampled_from([p for p in LEAVES if "streams" not in p[-2:]]), yaml_values)
def test_a_changed_setting_is_accepted_or_its_key_named(path: DocPath, value: object) -> None:
    """Any value in place of one setting: accepted, or refused naming that setting, the
    section it belongs to (`rate_limits.per_number`), or the key it is checked against."""
    result = parse(yaml.safe_dump(with_value(path, value)))
    if isinstance(result, ConfigError):
        named, changed = key_of(result), dotted(path)
        section = changed.startswith((named + ".", named + "[")) and "." in named
        assert named.startswith(changed) or section or named in _CHECKED_AGAINST.get(path, ()), str(
            result
        )


# Settings checked against another: an error may name the other key.
_RETENTIONS = tuple(f"streams.{s}.retention" for s in BASE["streams"])
_CHECKED_AGAINST: dict[DocPath, tuple[str, ...]] = {
    ("debounce", "quiet"): ("debounce.max_wait",),
    ("trimming", "projections"): _RETENTIONS,
    **{("trimming", "projections", i): _RETENTIONS for i in range(3)},
}


# Scalars as written in a file, which PyYAML resolves by their look (dates, hex, octal, base 60,
# booleans, specials) or by an explicit tag; its constructors raise plain ValueError.
yaml_literals = st.one_of(
    st.from_regex(r"\A[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}\Z"),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z?\Z"),
    st.from_regex(r"\A[-+]?0x[0-9a-fA-F_]{0,6}\Z"),
    st.from_regex(r"\A[-+]?0[0-7_]{0,6}\Z"),
    st.from_regex(r"\A[-+]?[1-9][0-9_]{0,4}(:[0-5]?[0-9]){1,3}(\.[0-9_]*)?\Z"),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.sampled_from(["yes", "off", "~", ".nan", ".NaN", ".inf", "-.inf", "1e400", "0b", "0x"]),
    st.tuples(
        st.sampled_from(["!!float", "!!int", "!!timestamp", "!!binary", "!!bool", "!!str"]),
        st.from_regex(r"\A[a-z0-9:.+-]{0,12}\Z"),
    ).map(" ".join),
)


@given(st.sampled_from(LEAVES), yaml_literals)
def test_a_yaml_literal_anywhere_is_a_topology_or_a_config_error(
    path: DocPath, literal: str
) -> None:
    text = yaml.safe_dump(with_value(path, "PLACEHOLDER"))
    parse(text.replace("PLACEHOLDER", literal))


@given(
    st.sampled_from(sorted(BASE["streams"])),
    st.sampled_from(sorted(BASE["groups"])),
    st.text(max_size=20) | st.integers() | st.none(),
)
def test_a_renamed_stream_is_accepted_or_named(stream: str, group: str, name: object) -> None:
    document = copy.deepcopy(BASE)
    document["streams"][name] = document["streams"].pop(stream)
    result = parse(yaml.safe_dump(document))
    if isinstance(result, ConfigError):
        named = key_of(result)
        assert named == "streams" or named.startswith(("streams.", "groups.")), str(result)


@given(
    st.floats(allow_nan=True)
    | st.integers(min_value=-(2**1100), max_value=2**1100)
    | st.text(max_size=30)
)
def test_a_duration_is_finite_seconds_or_a_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        assert str(err)
        return
    assert math.isfinite(seconds) and seconds >= 0


MINIMAL = "streams: {messages: {}, statuses: {}}\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        pytest.param(MINIMAL + "dedup: {window: .inf}\n", "dedup.window", "finite", id="inf"),
        pytest.param(MINIMAL + "sessions: {gap: .nan}\n", "sessions.gap", "finite", id="nan"),
        pytest.param(
            MINIMAL + "dedup: {window: " + "9" * 400 + "}\n",
            "dedup.window",
            "finite",
            id="int-too-large-for-a-float",
        ),
        pytest.param(
            MINIMAL + "webhook: {append_timeout: '" + "9" * 400 + "d'}\n",
            "webhook.append_timeout",
            "finite",
            id="digits-that-overflow-to-inf",
        ),
        pytest.param(
            MINIMAL + "groups: {g: {streams: [messages], backoff: {factor: .nan}}}\n",
            "groups.g.backoff.factor",
            "finite",
            id="nan-factor",
        ),
        pytest.param(
            MINIMAL + "groups: {g: {streams: [messages], backoff: {factor: -2}}}\n",
            "groups.g.backoff.factor",
            "greater than zero",
            id="negative-factor",
        ),
        pytest.param(
            MINIMAL + "groups: {g: {streams: [messages], batch: " + "9" * 30 + "}}\n",
            "groups.g.batch",
            "out of range",
            id="batch-past-64-bits",
        ),
        pytest.param(
            "streams: {messages: {retention: {max_len: " + "9" * 30 + "}}, statuses: {}}\n",
            "streams.messages.retention.max_len",
            "out of range",
            id="max-len-past-64-bits",
        ),
        pytest.param(
            "streams: {messages: 0, statuses: {}}\n",
            "streams.messages",
            "Expected `object`",
            id="zero-stream",
        ),
        pytest.param(
            "streams: {messages: [], statuses: {}}\n",
            "streams.messages",
            "Expected `object`",
            id="list-stream",
        ),
        pytest.param(MINIMAL + "dedup: {1: 7d}\n", "dedup", "a key is not text", id="int-key"),
        pytest.param(MINIMAL + "null: 1\n", "(top level)", "a key is not text", id="null-key"),
        pytest.param(MINIMAL + '"a\\nb": 1\n', "a\nb", "unknown key", id="newline-key"),
        pytest.param(
            MINIMAL + "streams: {messages: {description: 2001-13-45}}\n",
            "not valid YAML",
            "month must be in 1..12",
            id="impossible-date",
        ),
        pytest.param(
            MINIMAL + "prefix: !!float abc\n", "not valid YAML", "abc", id="bad-float-tag"
        ),
        pytest.param(
            MINIMAL + "partitions: " + "9" * 5000 + "\n",
            "not valid YAML",
            "4300 digits",
            id="int-of-5000-digits",
        ),
    ],
)
def test_hostile_files_name_key_and_reason(text: str, key: str, reason: str) -> None:
    """Each of these got past the loader (or out of it as another exception) before."""
    result = parse(text)
    assert isinstance(result, ConfigError)
    if key == "not valid YAML":
        assert str(result).startswith(f"{SOURCE}: not valid YAML: "), str(result)
    else:
        assert key_of(result) == key, str(result)
    assert reason in str(result)
