"""The report: a markdown table per section, each figure beside its peer, and the result line.

The result line is `bench ingest: key=value ...` with every figure and ratio; a ratio is
named `<figure>_vs_<peer>`.
"""

from __future__ import annotations

import statistics

from ingest_bench.appends import AppendFigures
from ingest_bench.memory import SET_KEY_TTL_S, MemoryFigures
from ingest_bench.webhook_load import ServerFigures

SERVER_LABELS = {
    "bare": "bare Starlette (ceiling)",
    "celery": "FastAPI + Celery .delay (peer)",
    "zapstream": "zapstream serve",
}

RESULT_KEYS = (
    "bare_rps", "celery_rps", "zapstream_rps", "bare_p50_ms", "celery_p50_ms", "zapstream_p50_ms",
    "bare_p99_ms", "celery_p99_ms", "zapstream_p99_ms", "rps_vs_celery", "rps_vs_bare",
    "p99_vs_celery", "py_appends_per_s", "py_unbatched_appends_per_s",
    "redis_benchmark_appends_per_s",
    "py_appends_per_s_vs_redis_benchmark", "dedup_bytes_per_msg", "dedup_field_bytes_per_msg",
    "set_key_bytes_per_msg", "dedup_bytes_per_msg_vs_set_key", "stream_bytes_per_msg",
)


def ratio(value: float, peer: float) -> float:
    return value / peer if peer else float("nan")


def spread_cell(values: list[float], fmt: str) -> str:
    """`median [min-max]` of one figure over the runs."""
    return (f"{fmt.format(statistics.median(values))} "
            f"[{fmt.format(min(values))}-{fmt.format(max(values))}]")


def render_webhooks(http: dict[str, ServerFigures], figures: dict[str, float]) -> list[str]:
    """The HTTP table; adds <server>_rps, _p50_ms, _p99_ms (medians) and ratios to `figures`."""
    zapstream = http["zapstream"]
    lines = [f"## HTTP ingest: {zapstream.load}, one uvicorn process each, median of "
             f"{len(zapstream.runs)} runs [min-max]",
             "", "| server | event loop | req/s | p50 ms | p99 ms | problems |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, label in SERVER_LABELS.items():
        server = http[name]
        cells = []
        for field, fmt in (("rps", "{:,.0f}"), ("p50_ms", "{:.2f}"), ("p99_ms", "{:.2f}")):
            figures[f"{name}_{field}"] = server.median(field)
            cells.append(spread_cell([getattr(run, field) for run in server.runs], fmt))
        problems = "; ".join(sorted({p for run in server.runs for p in run.problems})) or "none"
        lines.append(f"| {label} | {server.event_loop} | {' | '.join(cells)} | {problems} |")
    figures["rps_vs_celery"] = ratio(figures["zapstream_rps"], figures["celery_rps"])
    figures["rps_vs_bare"] = ratio(figures["zapstream_rps"], figures["bare_rps"])
    figures["p99_vs_celery"] = ratio(figures["zapstream_p99_ms"], figures["celery_p99_ms"])
    lines += ["", f"zapstream: {figures['rps_vs_celery']:.2f}x the celery peer's req/s at "
              f"{figures['p99_vs_celery']:.2f}x its p99; {figures['rps_vs_bare']:.1%} of the "
              "bare ceiling's req/s"]
    return lines


def render_appends(appends: AppendFigures, figures: dict[str, float]) -> list[str]:
    figures["py_appends_per_s"] = appends.python_rate
    figures["py_unbatched_appends_per_s"] = appends.unbatched_rate
    figures["redis_benchmark_appends_per_s"] = appends.benchmark_rate
    figures["py_appends_per_s_vs_redis_benchmark"] = ratio(
        appends.python_rate, appends.benchmark_rate)
    return [
        "## dedup-appends per second: append.lua, 50 concurrent appenders of one event each", "",
        "| appender | appends/s |", "| --- | --- |",
        f"| Python AppendBatcher.append, the webhook's path ({appends.python_loop} loop) | "
        f"{appends.python_rate:,.0f} |",
        f"| Python dedup_append, one EVALSHA per event | {appends.unbatched_rate:,.0f} |",
        f"| redis-benchmark EVALSHA, one event per call (peer) | "
        f"{appends.benchmark_rate:,.0f} |",
        f"| Python vs redis-benchmark | "
        f"{figures['py_appends_per_s_vs_redis_benchmark']:.1%} (target >= 40%) |",
        "", "redis-benchmark command:", "", f"    {appends.command}",
    ]


def render_memory(memory: MemoryFigures, figures: dict[str, float]) -> list[str]:
    n = memory.messages
    figures["stream_bytes_per_msg"] = memory.stream_bytes / n
    figures["dedup_bytes_per_msg"] = memory.record_bytes / n
    figures["dedup_field_bytes_per_msg"] = memory.dedup_field_bytes / n
    figures["set_key_bytes_per_msg"] = memory.set_key_bytes / n
    figures["dedup_bytes_per_msg_vs_set_key"] = ratio(
        figures["dedup_bytes_per_msg"], figures["set_key_bytes_per_msg"])
    return [
        f"## Redis bytes per message: {n:,} messages in {memory.conversations:,} conversations", "",
        "| what | used_memory delta, bytes/msg | MEMORY USAGE, bytes/msg |",
        "| --- | --- | --- |",
        f"| stream entry (message.received) | {figures['stream_bytes_per_msg']:.0f} | "
        f"{memory.stream_usage_bytes / n:.0f} |",
        f"| conversation record (dedup records + session state) | "
        f"{figures['dedup_bytes_per_msg']:.1f} | {memory.record_usage_bytes / n:.1f} |",
        f"| - of which the dedup field alone | | {figures['dedup_field_bytes_per_msg']:.1f} |",
        f"| naive SET dedup:<wamid> 1 EX {SET_KEY_TTL_S}, one key (peer) | "
        f"{figures['set_key_bytes_per_msg']:.1f} | |",
        f"| conversation record vs SET key | {figures['dedup_bytes_per_msg_vs_set_key']:.2f}x | |",
    ]


def render_report(
    http: dict[str, ServerFigures], appends: AppendFigures, memory: MemoryFigures
) -> tuple[str, dict[str, float]]:
    """The three tables as markdown, and every figure by its result-line key."""
    figures: dict[str, float] = {}
    sections = [render_webhooks(http, figures), render_appends(appends, figures),
                render_memory(memory, figures)]
    return "\n\n".join("\n".join(lines) for lines in sections), figures


def result_line(figures: dict[str, float]) -> str:
    """`bench ingest: key=value ...` with every figure of RESULT_KEYS, in that order."""
    words = []
    for key in RESULT_KEYS:
        value = figures[key]
        words.append(f"{key}={value:.0f}" if abs(value) >= 100 else f"{key}={value:.3g}")
    return "bench ingest: " + " ".join(words)
