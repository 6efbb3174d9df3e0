"""Every Prometheus metric by name, in one registry per process, and the /metrics app.

Counters and histograms are recorded where things happen, in the process where they happen;
the figures of the shared Redis (lag, pending, dead letters, memory...) are read at each
scrape (scrape.py) and exported by every command alike. No label carries a session id, a
phone number or any other per-customer value, and no secret is ever a label or a value.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from starlette.responses import Response

from zapstream.scrape import Figures, read_figures
from zapstream.topology import Topology

log = structlog.get_logger()


class Metrics:
    """The process's metrics; built once by the command that runs, passed to what records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhook_requests = Counter(
            "zapstream_webhook_requests",
            "Webhook POSTs answered, by HTTP status code",
            ["code"],
            registry=self.registry,
        )
        self.events_appended = Counter(
            "zapstream_events_appended",
            "Events appended to the log, by type",
            ["type"],
            registry=self.registry,
        )
        self.duplicates_dropped = Counter(
            "zapstream_duplicates_dropped",
            "Redeliveries found already appended, by stream",
            ["stream"],
            registry=self.registry,
        )
        self.append_seconds = Histogram(
            "zapstream_append_seconds",
            "Time to dedup-append the events of one POST",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
        )

        def per_group(name: str, documentation: str) -> Counter:
            return Counter(name, documentation, ["group"], registry=self.registry)

        self.handler_done = per_group("zapstream_handler_done", "Entries handled and acked")
        self.handler_failed = per_group("zapstream_handler_failed", "Handler failures")
        self.handler_retried = per_group("zapstream_handler_retried", "Retry outcomes (waits)")
        self.handler_fenced = per_group(
            "zapstream_handler_fenced", "Acks refused: another consumer had taken the entry over"
        )
        self.dead_lettered = per_group("zapstream_dead_lettered", "Entries dead-lettered")
        self.reclaimed = per_group("zapstream_reclaimed", "Entries taken over from dead consumers")
        self.handler_seconds = Histogram(
            "zapstream_handler_seconds",
            "Handler run time",
            ["group"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0),
        )

        self.turn_messages = Histogram(
            "zapstream_turn_messages",
            "Messages of one turn, merged by the debounce window (observed once it settles)",
            registry=self.registry,
            buckets=(1, 2, 3, 4, 5, 8, 13, 21),
        )
        self.ai_tokens = Counter(
            "zapstream_ai_tokens",
            "Tokens the AI reported for new answers (a stored answer is not counted again)",
            registry=self.registry,
        )
        self.replies_superseded = Counter(
            "zapstream_replies_superseded",
            "Replies discarded unsent because the customer wrote again meanwhile",
            registry=self.registry,
        )
        self.superseded_tokens = Counter(
            "zapstream_superseded_tokens",
            "Tokens the superseded replies had cost",
            registry=self.registry,
        )
        self.replies_held = Counter(
            "zapstream_replies_held",
            "Replies held back unsent, by reason: window_closed (the 24-hour window), handoff",
            ["reason"],
            registry=self.registry,
        )
        self.sends = Counter(
            "zapstream_sends",
            "Graph API POSTs of reply parts, by result and WhatsApp error code",
            ["result", "code"],
            registry=self.registry,
        )
        self.reply_latency = Histogram(
            "zapstream_reply_latency_seconds",
            "From the arrival of the newest message a reply answers to the reply sent",
            registry=self.registry,
            buckets=(0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0),
        )
        self.parts_resent = Counter(
            "zapstream_parts_resent",
            "Reply parts resent after no status came within send.doubt",
            registry=self.registry,
        )
        self.parts_settled_by_status = Counter(
            "zapstream_parts_settled_by_status",
            "Reply parts in doubt completed by their status webhook",
            registry=self.registry,
        )
        self.sender_paused = Counter(
            "zapstream_sender_paused",
            "Times sending paused on an auth, permission or account error",
            registry=self.registry,
        )

        self.trim_pinned = Gauge(
            "zapstream_retention_pinned_entries",
            "Entries older than the stream's retention kept because a group or projection "
            "still needs them (inspect names which)",
            ["stream_key"],
            registry=self.registry,
        )
        self.trimmed = Counter(
            "zapstream_trimmed_entries",
            "Entries removed from a stream by trimming",
            ["stream_key"],
            registry=self.registry,
        )
        self.redis_figures = RedisFigures()
        self.registry.register(self.redis_figures)

    # Labelled children are looked up once: labels() takes a lock on every call.

    @functools.cache  # noqa: B019 - one Metrics per process, kept for its lifetime
    def answered(self, code: int) -> Counter:
        return self.webhook_requests.labels(code=str(code))

    @functools.cache  # noqa: B019
    def appended(self, type_name: str) -> Counter:
        return self.events_appended.labels(type=type_name)

    @functools.cache  # noqa: B019
    def duplicate(self, stream: str) -> Counter:
        return self.duplicates_dropped.labels(stream=stream)

    @functools.cache  # noqa: B019
    def group(self, counter: str, group: str) -> Counter:
        metric: Counter = getattr(self, counter)
        return metric.labels(group=group)

    @functools.cache  # noqa: B019
    def sent(self, result: str, code: str = "") -> Counter:
        return self.sends.labels(result=result, code=code)

    @functools.cache  # noqa: B019
    def held(self, reason: str) -> Counter:
        return self.replies_held.labels(reason=reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RedisFigures(Collector):
    """The figures of the last scrape's Redis read, exported as gauges; none when it failed
    (a stale lag would be worse than none), but `zapstream_redis_read_failed` says so."""

    def __init__(self) -> None:
        self.figures: Figures | None = None
        self.failed = False
        self.seconds = 0.0

    async def refresh(self, redis: Redis, topology: Topology) -> None:
        started = time.perf_counter()
        try:
            self.figures = await read_figures(redis, topology)
            self.failed = False
        except Exception as err:  # whatever Redis did, /metrics answers with what it has
            self.figures, self.failed = None, True
            log.warning("metrics_redis_read_failed", error=f"{type(err).__name__}: {err}")
        self.seconds = time.perf_counter() - started

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "zapstream_redis_read_failed",
            "1 when this scrape could not read the figures of Redis (they are left out)",
            value=int(self.failed),
        )
        yield GaugeMetricFamily(
            "zapstream_redis_read_seconds",
            "Time this scrape took to read the figures of Redis",
            value=self.seconds,
        )
        if self.figures is not None:
            yield from _figure_families(self.figures)


def _figure_families(figures: Figures) -> Iterator[GaugeMetricFamily]:
    by_group = ["group", "stream_key"]
    lag = GaugeMetricFamily(
        "zapstream_group_lag", "Entries appended, not yet delivered to the group", labels=by_group
    )
    pending = GaugeMetricFamily(
        "zapstream_group_pending", "Entries delivered to the group, not yet acked", labels=by_group
    )
    consumers = GaugeMetricFamily(
        "zapstream_group_consumers", "Consumers the group has on the stream", labels=by_group
    )
    for stats in figures.groups:
        lag.add_metric([stats.group, stats.key], stats.lag)
        pending.add_metric([stats.group, stats.key], stats.pending)
        consumers.add_metric([stats.group, stats.key], stats.consumers)
    yield from (lag, pending, consumers)
    dead = GaugeMetricFamily(
        "zapstream_dead_letters", "Entries in the group's dead-letter streams", labels=["group"]
    )
    for group, entries in figures.dead_letters.items():
        dead.add_metric([group], entries)
    yield dead
    yield GaugeMetricFamily(
        "zapstream_replies_in_doubt",
        "Reply parts whose POST outcome is unknown, waiting for their status webhook",
        value=figures.in_doubt,
    )
    yield GaugeMetricFamily(
        "zapstream_sending_paused", "1 while sending is paused", value=int(figures.paused)
    )
    yield GaugeMetricFamily(
        "zapstream_redis_memory_used_bytes", "Redis used_memory", value=figures.memory_used
    )
    yield GaugeMetricFamily(
        "zapstream_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)", value=figures.maxmemory
    )
    started = GaugeMetricFamily(
        "zapstream_projection_started",
        "1 once the projection has mirrored a checkpoint; 0: it never ran",
        labels=["projection"],
    )
    for projection, ran in figures.projections.items():
        started.add_metric([projection], int(ran))
    yield started
    behind = GaugeMetricFamily(
        "zapstream_projection_lag_seconds",
        "From the projection's checkpoint to the stream's last entry (0: caught up)",
        labels=["projection", "stream_key"],
    )
    for item in figures.projection_lags:
        behind.add_metric([item.projection, item.key], item.seconds)
    yield behind


async def metrics_endpoint(metrics: Metrics, redis: Redis, topology: Topology) -> Response:
    """The process's metrics and the figures of Redis read now."""
    await metrics.redis_figures.refresh(redis, topology)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
