"""Every Prometheus metric by name, in one registry per process, and the /metrics app."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response


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

        self.replies_in_doubt = Gauge(
            "zapstream_replies_in_doubt",
            "Reply parts whose POST outcome is unknown, waiting for their status webhook",
            registry=self.registry,
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

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
