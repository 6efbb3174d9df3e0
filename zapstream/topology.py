"""Topology: streams.yaml as frozen Structs, checked once at start.

An unknown key, a wrong type, a bad duration or a group naming a stream that does not
exist raises ConfigError naming the file, the key and the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from zapstream.settings import ConfigError


class Duration(float):
    """Seconds, written in streams.yaml as `300ms`, `2s`, `1.5m`, `24h`, `7d` or a number."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
# Longer than any window or timeout means, short enough for every timer and Lua number.
_MAX_SECONDS = 100 * 365 * 86400.0
# msgspec keeps integers of any size; Redis and Lua take at most 64-bit ones.
_MAX_INT = 2**63 - 1


def parse_duration(value: object) -> Duration:
    """Seconds from a streams.yaml duration; ValueError (msgspec reports it with the key)
    for anything else, infinite and NaN included: `.inf` or `9999...d` would pass every
    `> 0` check and then break the timers and scripts that get it."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as `2s`, `300ms`, `24h` or `7d`")
    seconds: float | None = None
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value) if value <= _MAX_SECONDS else math.inf  # 10**400: no float
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            number, unit = match.groups()
            seconds = float(number) * _UNITS[unit or "s"]
    if seconds is None:
        raise ValueError(f"expected a duration such as `2s`, `300ms`, `24h` or `7d`, got {value!r}")
    if not seconds <= _MAX_SECONDS:  # also false for NaN
        raise ValueError(f"a duration must be finite and at most 100 years, got {value!r}")
    return Duration(seconds)


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Duration:
        return parse_duration(obj)
    raise NotImplementedError(f"no decoder for {type_!r}")


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every streams.yaml Struct: a typo in our own file stops the start."""


class Retention(_Spec, frozen=True, kw_only=True):
    """How much of a stream Redis keeps: entries older than `max_age` or beyond the newest
    `max_len` may be trimmed, once archived and consumed (projections/trim.py)."""

    max_age: Duration | None = None
    max_len: int | None = None


class StreamSpec(_Spec, frozen=True, kw_only=True):
    description: str = ""
    retention: Retention | None = None  # None: never trimmed


# Projections a topology may name in `trimming.projections`.
PROJECTION_NAMES = ("sessions", "analytics", "archive")


class Trimming(_Spec, frozen=True, kw_only=True):
    # How often `zapstream project` (and `run`) trims the streams that have a retention.
    every: Duration = Duration(60.0)
    # Projections whose checkpoints pin trimming; one that never ran pins it at the start.
    projections: tuple[str, ...] = PROJECTION_NAMES


class Backoff(_Spec, frozen=True, kw_only=True):
    """Delay before retry n (1-based): min(base * factor ** (n - 1), max)."""

    base: Duration = Duration(1.0)
    factor: float = 2.0
    max: Duration = Duration(300.0)


class GroupSpec(_Spec, frozen=True, kw_only=True):
    # Read in this order: the first stream has the highest priority.
    streams: tuple[str, ...]
    concurrency: int = 16
    batch: int = 100
    block: Duration = Duration(1.0)
    # A consumer silent for longer than this is presumed dead; its entries are taken over.
    idle: Duration = Duration(30.0)
    max_failures: int = 5
    backoff: Backoff = Backoff()
    grace: Duration = Duration(10.0)
    timeout: Duration = Duration(60.0)


class Dedup(_Spec, frozen=True, kw_only=True):
    # Meta retries an unacknowledged notification for up to 7 days.
    window: Duration = Duration(7 * 86400.0)


class Sessions(_Spec, frozen=True, kw_only=True):
    gap: Duration = Duration(86400.0)


class Webhook(_Spec, frozen=True, kw_only=True):
    # Meta's documented maximum is 3 MB; we accept up to 3 MiB.
    max_body: int = 3 * 1024 * 1024
    append_timeout: Duration = Duration(3.0)


class Debounce(_Spec, frozen=True, kw_only=True):
    quiet: Duration = Duration(2.0)
    max_wait: Duration = Duration(10.0)
    policy: Literal["supersede", "send"] = "supersede"


class RateLimit(_Spec, frozen=True, kw_only=True):
    rate: int
    per: Duration = Duration(1.0)
    burst: int = 0


class RateLimits(_Spec, frozen=True, kw_only=True):
    per_number: RateLimit = RateLimit(rate=80, burst=20)
    per_customer: RateLimit = RateLimit(rate=1, per=Duration(6.0), burst=10)


class Send(_Spec, frozen=True, kw_only=True):
    """The sender's settings (processors/send.py)."""

    # One Graph API call; no answer within it leaves the part in doubt.
    timeout: Duration = Duration(10.0)
    # A part in doubt waits this long for its `sent` status webhook, then is resent once.
    doubt: Duration = Duration(60.0)
    # An auth or permission error (expired token, restricted account) stops every send this long.
    pause: Duration = Duration(60.0)
    # WhatsApp takes 4096 characters per text; longer answers go as ordered parts of at most this.
    max_chars: int = 4000
    # No free-form reply after this long since the customer's newest message (WhatsApp's rule).
    window: Duration = Duration(86400.0)


class Topology(_Spec, frozen=True, kw_only=True):
    # Prefix of every Redis key zapstream writes.
    prefix: str = "zapstream"
    partitions: int = 1
    dedup: Dedup = Dedup()
    sessions: Sessions = Sessions()
    webhook: Webhook = Webhook()
    debounce: Debounce = Debounce()
    rate_limits: RateLimits = RateLimits()
    send: Send = Send()
    trimming: Trimming = Trimming()
    streams: dict[str, StreamSpec]
    groups: dict[str, GroupSpec] = {}


# Streams the ingest side writes; every topology must declare them.
REQUIRED_STREAMS = ("messages", "statuses")


def load_topology(path: str | Path) -> Topology:
    """Read and check streams.yaml; every problem is a ConfigError naming file and key."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    return parse_topology(text, source=str(path))


def parse_topology(text: bytes | str, *, source: str = "streams.yaml") -> Topology:
    try:
        document = msgspec.yaml.decode(text)
    except msgspec.DecodeError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    except Exception as err:
        # Besides DecodeError, PyYAML's constructors let out whatever their conversions raise:
        # ValueError (a date like 2001-13-45, an integer of 5000 digits), KeyError (`!!bool`
        # with no value), IndexError (`!!int` with none), AttributeError (`!!timestamp x`).
        raise ConfigError(f"{source}: not valid YAML: {type(err).__name__}: {err}") from err
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of settings")
    # Streams and groups are decoded one by one so that an error names the group's key
    # (msgspec's path shows a dict key as `[...]`).
    streams = {
        str(name): _convert({} if spec is None else spec, StreamSpec, source, f"streams.{name}")
        for name, spec in _mapping(document.pop("streams", None), source, "streams").items()
    }
    groups = {
        str(name): _convert(spec, GroupSpec, source, f"groups.{name}")
        for name, spec in _mapping(document.pop("groups", None), source, "groups").items()
    }
    document["streams"] = {}
    topology = _convert(document, Topology, source, "")
    topology = msgspec.structs.replace(topology, streams=streams, groups=groups)
    _check(topology, source)
    return topology


def _mapping(value: object, source: str, key: str) -> dict[object, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping of names")
    return value


_T = TypeVar("_T")


def _convert(value: object, type_: type[_T], source: str, key: str) -> _T:
    try:
        return msgspec.convert(value, type_, dec_hook=_dec_hook)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err, key)}") from err


def _describe(err: msgspec.ValidationError, prefix: str) -> str:
    """`key: reason` from msgspec's "Expected `int`, got `str` - at `$.send.batch`"."""
    message, _, where = str(err).rpartition(" - at ")
    if not message:
        message, where = str(err), "$"
    # A mapping's key that is not text comes as "Expected `str` - at `key` in `$.dedup`".
    key_of = re.fullmatch(r"`key` in `(.*)`", where)
    if key_of:
        where = key_of.group(1)
        message = f"a key is not text ({message})"
    parts = [p for p in (prefix, where.strip("`").removeprefix("$").lstrip(".")) if p]
    unknown = re.match(r"Object contains unknown field `(.+)`", message, re.S)
    if unknown:
        parts.append(unknown.group(1))
        message = "unknown key"
    return f"{'.'.join(parts) or '(top level)'}: {message}"


def _check_numbers(value: object, key: str, fail: Callable[[str, str], None]) -> None:
    """Every integer fits 64 bits and every float is finite, through nested Structs."""
    if isinstance(value, msgspec.Struct):
        for field in msgspec.structs.fields(value):
            name = f"{key}.{field.encode_name}" if key else field.encode_name
            _check_numbers(getattr(value, field.name), name, fail)
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_numbers(item, f"{key}.{name}", fail)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and not -_MAX_INT <= value <= _MAX_INT:
        fail(key, "out of range (at most 2**63 - 1)")
    elif isinstance(value, float) and not math.isfinite(value):
        fail(key, "must be a finite number")


def _check(topology: Topology, source: str) -> None:
    def fail(key: str, reason: str) -> None:
        raise ConfigError(f"{source}: {key}: {reason}")

    _check_numbers(topology, "", fail)
    if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", topology.prefix):
        fail("prefix", "use 1-32 letters, digits, `_`, `.` or `-`")
    if not 1 <= topology.partitions <= 1024:
        fail("partitions", "must be between 1 and 1024")
    for key, value in (
        ("dedup.window", topology.dedup.window),
        ("sessions.gap", topology.sessions.gap),
        ("webhook.append_timeout", topology.webhook.append_timeout),
    ):
        if value <= 0:
            fail(key, "must be longer than zero")
    for key, value in (
        ("send.timeout", topology.send.timeout),
        ("send.doubt", topology.send.doubt),
        ("send.window", topology.send.window),
    ):
        if value <= 0:
            fail(key, "must be longer than zero")
    if not 1 <= topology.send.max_chars <= 4096:
        fail("send.max_chars", "must be between 1 and 4096 (WhatsApp's text limit)")
    if topology.webhook.max_body < 1024:
        fail("webhook.max_body", "must be at least 1024 bytes")
    if topology.debounce.max_wait < topology.debounce.quiet:
        fail("debounce.max_wait", "must not be shorter than debounce.quiet")
    for name in ("per_number", "per_customer"):
        limit: RateLimit = getattr(topology.rate_limits, name)
        if limit.rate < 1 or limit.per <= 0 or limit.burst < 0:
            fail(f"rate_limits.{name}", "rate must be >= 1, per > 0 and burst >= 0")
    for name in topology.streams:
        if not _NAME.match(name):
            fail(f"streams.{name}", "a stream name is lowercase letters, digits, `_`, `.`, `-`")
    _check_retention(topology, fail)
    for name in REQUIRED_STREAMS:
        if name not in topology.streams:
            fail("streams", f"the stream `{name}` is required (the webhook appends to it)")
    for name, group in topology.groups.items():
        key = f"groups.{name}"
        if not _NAME.match(name):
            fail(key, "a group name is lowercase letters, digits, `_`, `.`, `-`")
        if not group.streams:
            fail(f"{key}.streams", "name at least one stream")
        if len(set(group.streams)) != len(group.streams):
            fail(f"{key}.streams", "a stream is named twice")
        for stream in group.streams:
            if stream not in topology.streams:
                known = ", ".join(sorted(topology.streams))
                fail(f"{key}.streams", f"unknown stream `{stream}` (declared: {known})")
        for field in ("concurrency", "batch", "max_failures"):
            if getattr(group, field) < 1:
                fail(f"{key}.{field}", "must be at least 1")
        for field in ("block", "idle", "grace", "timeout"):
            if getattr(group, field) <= 0:
                fail(f"{key}.{field}", "must be longer than zero")
        if group.backoff.factor <= 0:
            fail(f"{key}.backoff.factor", "must be greater than zero")


def _check_retention(topology: Topology, fail: Callable[[str, str], None]) -> None:
    if topology.trimming.every <= 0:
        fail("trimming.every", "must be longer than zero")
    for name in topology.trimming.projections:
        if name not in PROJECTION_NAMES:
            fail(
                "trimming.projections",
                f"unknown projection `{name}` (known: sessions, analytics, archive)",
            )
    for name, spec in topology.streams.items():
        retention = spec.retention
        if retention is None:
            continue
        key = f"streams.{name}.retention"
        if retention.max_age is None and retention.max_len is None:
            fail(key, "set max_age, max_len or both (or leave retention out: never trimmed)")
        if retention.max_age is not None and retention.max_age <= 0:
            fail(f"{key}.max_age", "must be longer than zero")
        if retention.max_len is not None and retention.max_len < 1:
            fail(f"{key}.max_len", "must be at least 1")
        if "archive" not in topology.trimming.projections:
            fail(
                key,
                "trimming.projections must include `archive`: nothing is trimmed before "
                "it is archived",
            )
