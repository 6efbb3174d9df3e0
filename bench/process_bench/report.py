"""The report: one markdown table, each consumer's events/s with its spread, then the ratios;
and the result line, `bench process: key=value ...`, a ratio named `<figure>_vs_<peer>`."""

from __future__ import annotations

import os
import statistics

import msgspec

from process_bench.celery_peer import CeleryRun
from process_bench.loop import event_loop_name
from process_bench.options import Options

CELERY_TARGET = 20.0  # zapstream's events/s at least this many times Celery's
BARE_TARGET = 0.30  # and at least this share of the bare loop's

RESULT_KEYS = (
    "zapstream_events_per_s",
    "celery_events_per_s",
    "bare_events_per_s",
    "events_per_s_vs_celery",
    "events_per_s_vs_bare",
    "zapstream_events",
    "celery_events",
    "bare_events",
    "runs",
    "concurrency",
    "batch",
    "zapstream_min",
    "zapstream_max",
    "celery_min",
    "celery_max",
    "bare_min",
    "bare_max",
    "celery_enqueue_per_s",
    "load_avg_start",
    "load_avg_end",
)


def ratio(value: float, peer: float) -> float:
    return value / peer if peer else float("nan")


def spread_cell(values: list[float], fmt: str) -> str:
    """`median [min-max]` of one figure over the runs (as bench/ingest writes it; its report
    module is not imported, it would bring bench/ingest's whole pipeline along)."""
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}-{fmt.format(max(values))}]"
    )


class Results(msgspec.Struct, kw_only=True):
    """Every run's figure, in run order, and the load around them."""

    zapstream: list[float] = msgspec.field(default_factory=list)  # events/s
    bare: list[float] = msgspec.field(default_factory=list)  # events/s
    celery: list[CeleryRun] = msgspec.field(default_factory=list)
    load_start: float = float("nan")
    load_end: float = float("nan")


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "NOT met"


def render_report(options: Options, results: Results) -> tuple[str, dict[str, float]]:
    """The table as markdown, and every figure by its result-line key."""
    celery = [run.rate for run in results.celery]
    rows = (
        (
            "zapstream",
            "zapstream GroupRunner.drain(): read, decode, dispatch, fenced ack",
            options.events,
            results.zapstream,
            f"concurrency {options.concurrency}, batch {options.batch}, on {event_loop_name()}",
        ),
        (
            "celery",
            "Celery worker, solo pool, Redis broker (peer)",
            options.celery_events,
            celery,
            "--pool solo --concurrency 1, default prefetch",
        ),
        (
            "bare",
            "bare redis-py XREADGROUP + XACK loop (ceiling)",
            options.events,
            results.bare,
            f"COUNT {options.batch}, one call at a time, on {event_loop_name()}",
        ),
    )
    figures: dict[str, float] = {}
    lines = [
        f"## events/s through a consumer group, no-op handler: median of {options.runs} "
        "runs [min-max]",
        "",
        f"load average {results.load_start:.2f} at the start, {results.load_end:.2f} at "
        f"the end, on {os.cpu_count()} CPUs (shared with whatever else runs)",
        "",
        "| consumer | events per run | events/s | settings |",
        "| --- | --- | --- | --- |",
    ]
    for name, label, events, rates, settings in rows:
        figures[f"{name}_events_per_s"] = statistics.median(rates)
        figures[f"{name}_min"], figures[f"{name}_max"] = min(rates), max(rates)
        figures[f"{name}_events"] = events
        lines.append(f"| {label} | {events:,} | {spread_cell(rates, '{:,.0f}')} | {settings} |")
    figures["events_per_s_vs_celery"] = ratio(
        figures["zapstream_events_per_s"], figures["celery_events_per_s"]
    )
    figures["events_per_s_vs_bare"] = ratio(
        figures["zapstream_events_per_s"], figures["bare_events_per_s"]
    )
    figures["celery_enqueue_per_s"] = statistics.median(run.enqueue_rate for run in results.celery)
    figures.update(
        runs=options.runs,
        concurrency=options.concurrency,
        batch=options.batch,
        load_avg_start=results.load_start,
        load_avg_end=results.load_end,
    )
    vs_celery, vs_bare = figures["events_per_s_vs_celery"], figures["events_per_s_vs_bare"]
    startup = statistics.median(run.startup_s for run in results.celery)
    lines += [
        f"| zapstream vs Celery | | {vs_celery:.1f}x | target >= {CELERY_TARGET:g}x: "
        f"{verdict(vs_celery, CELERY_TARGET)} |",
        f"| zapstream vs bare | | {vs_bare:.1%} | target >= {BARE_TARGET:.0%}: "
        f"{verdict(vs_bare, BARE_TARGET)} |",
        "",
        f"Celery runs {options.celery_events:,} tasks (fewer: it is slow; the figure is a rate). "
        f"Enqueued first at {figures['celery_enqueue_per_s']:,.0f} tasks/s, not timed; the "
        f"worker's start-up ({startup:.2f} s median) is not timed either.",
    ]
    return "\n".join(lines), figures


def result_line(figures: dict[str, float]) -> str:
    """`bench process: key=value ...` with every figure of RESULT_KEYS, in that order."""
    words = []
    for key in RESULT_KEYS:
        value = figures[key]
        if key.startswith("load_avg"):
            words.append(f"{key}={value:.2f}")
        else:
            words.append(f"{key}={value:.0f}" if abs(value) >= 100 else f"{key}={value:.3g}")
    return "bench process: " + " ".join(words)
