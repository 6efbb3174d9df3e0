"""The report: one markdown table of the XRANGE reads and the rebuilds, the issue's targets,
and the result line, `bench replay: key=value ...`, a ratio named `<figure>_vs_<peer>`."""

from __future__ import annotations

import math
import os

from e2e_bench.report import number, ratio, verdict
from replay_bench.job import Measurement
from replay_bench.log import LogFigures
from replay_bench.options import PROJECTIONS, Options

RATE_TARGETS = {"sessions": 0.25, "analytics": 0.50}  # share of the XRANGE rate, at least
PEAK_MB_TARGET = 500.0  # each rebuild's peak resident memory under this
WHEN = ("before", "after")  # the XRANGE reads, around the rebuilds

RESULT_KEYS = (
    "xrange_per_s",
    "sessions_per_s",
    "analytics_per_s",
    "sessions_per_s_vs_xrange",
    "analytics_per_s_vs_xrange",
    "sessions_peak_mb",
    "analytics_peak_mb",
)


def row(label: str, measurement: Measurement, xrange_rate: float) -> str:
    timed, backends = measurement.timed, measurement.backends
    cells = (
        label,
        f"{timed.events:,}",
        f"{timed.seconds:.2f}",
        f"{measurement.rate:,.0f}",
        f"{ratio(measurement.rate, xrange_rate):.1%}",
        f"{measurement.peak_rss_mb:.0f}",
        f"{timed.rss_start_mb:.0f}",
        f"{backends.rss_mb:.0f} ({backends.private_mb:.0f})" if backends else "",
        timed.settings,
    )
    return "| " + " | ".join(cells) + " |"


def render_report(
    options: Options,
    log: LogFigures,
    xranges: list[Measurement],
    rebuilds: dict[str, Measurement],
    load: tuple[float, float],
) -> tuple[str, dict[str, float]]:
    """The tables as markdown, and every figure by its result-line key."""
    xrange_rate = max(m.rate for m in xranges)
    figures = {"xrange_per_s": xrange_rate}
    for name in PROJECTIONS:
        rebuilt = rebuilds.get(name)
        figures[f"{name}_per_s"] = rebuilt.rate if rebuilt else math.nan
        figures[f"{name}_per_s_vs_xrange"] = ratio(figures[f"{name}_per_s"], xrange_rate)
        figures[f"{name}_peak_mb"] = rebuilt.peak_rss_mb if rebuilt else math.nan
    streams = ", ".join(f"{stream} {count:,}" for stream, count in log.by_stream.items())
    lines = [
        f"## rebuilding each read model from {log.events:,} events, against XRANGE alone",
        "",
        f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end, on "
        f"{os.cpu_count()} CPUs (shared with whatever else runs)",
        "",
        "| what | events | seconds | events/s | % of XRANGE | peak RSS MB | RSS MB at the start "
        "| PostgreSQL backends peak RSS MB (private) | settings |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(row(f"XRANGE, {when}", m, xrange_rate) for when, m in zip(WHEN, xranges, strict=True)),
        *(row(f"{name} rebuild", m, xrange_rate) for name, m in rebuilds.items()),
        "",
        "| target (issue) | measured | verdict |",
        "| --- | --- | --- |",
    ]
    for name in rebuilds:
        share = figures[f"{name}_per_s_vs_xrange"]
        lines.append(
            f"| {name} >= {RATE_TARGETS[name]:.0%} of the XRANGE rate | {share:.1%} | "
            f"{verdict(share >= RATE_TARGETS[name])} |"
        )
    for name, rebuilt in rebuilds.items():
        peak = f"{rebuilt.peak_rss_mb:.0f} MB"
        if rebuilt.backends:
            peak += (
                f" (PostgreSQL backends besides: {rebuilt.backends.rss_mb:.0f} MB, "
                f"{rebuilt.backends.private_mb:.0f} MB private)"
            )
        lines.append(
            f"| {name} peak RSS < {PEAK_MB_TARGET:g} MB | {peak} | "
            f"{verdict(rebuilt.peak_rss_mb < PEAK_MB_TARGET)} |"
        )
    lines += [
        "",
        f"- The log: the seeded history of tests/projections/history.py (seed {log.seed}, "
        f"{log.sessions:,} sessions, cut at {options.events:,} events), appended with pipelined "
        f"XADD before anything is timed: {streams}; Redis used_memory {log.redis_mb:,.0f} MB.",
        "- XRANGE: every stream key read to its end, COUNT 1000, nothing decoded (redis-py "
        "asyncio, hiredis where installed); read before and after the rebuilds, the faster is "
        "the peer.",
        "- Rebuild: `projections.replay.replay()`, what `zapstream replay` runs: a fresh copy "
        "(its start() and migrations included), the whole log followed into it, then the "
        "promotion (sessions: derived columns computed once, schemas swapped; analytics: the "
        "file renamed into place), all timed. It reads the streams with XRANGE too, its "
        "replies as hiredis returns them: without the dict per entry redis-py's xrange() "
        "builds for the peer (about a third of the peer's time).",
        "- Each row is a process of its own (same imports as `zapstream replay`, on its event "
        "loop): peak RSS is its VmHWM (getrusage's ru_maxrss would count the parent's memory at "
        "the fork), RSS at the start its resident set just before the clock started. "
        "PostgreSQL's backends are processes of the server, sampled from /proc every 0.25 s: "
        "their summed VmRSS (shared buffers they touched included) and RssAnon (private).",
    ]
    return "\n".join(lines), figures


def result_line(figures: dict[str, float]) -> str:
    """`bench replay: key=value ...` with every figure of RESULT_KEYS, in that order."""
    return "bench replay: " + " ".join(f"{key}={number(figures[key])}" for key in RESULT_KEYS)
