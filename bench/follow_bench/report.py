"""The report: one markdown table of the scenarios, one of each follower's catch-up, the notes,
and the result line `bench follow: idle_p99_ms=.. busy_p99_ms=.. busy_p99_ms_vs_idle=..
applied_per_s=..` (busy: every follower catching up; a ratio is named `<figure>_vs_<peer>`)."""

from __future__ import annotations

import math
import os

from e2e_bench.report import number, ratio
from follow_bench.checkpoints import POLL_S
from follow_bench.options import Options
from follow_bench.scenario import ScenarioResult, since_text
from projections.replay import FOLLOWED

RESULT_KEYS = ("idle_p99_ms", "busy_p99_ms", "busy_p99_ms_vs_idle", "applied_per_s")
IDLE, BUSY = "idle", "all"
CPU_OTHERS = ("standin", "generator", "redis", "postgres")


def followers_cell(result: ScenarioResult) -> str:
    if not result.catching_up:
        return "no: all follow live"
    live = [f for f in FOLLOWED if f not in result.catching_up]
    cell = " + ".join(result.catching_up)
    cell += ": the whole window" if result.covered else ": NOT the whole window"
    return cell + (f"; {', '.join(live)} live" if live else "")


def applied_cell(result: ScenarioResult) -> str:
    if not result.catching_up:
        return "- (live entries only)"
    parts = " + ".join(f"{result.applied[f]:,.0f}" for f in result.catching_up)
    total = sum(result.applied.values())
    total_text = f" = {total:,.0f}" if len(result.catching_up) > 1 else ""
    return f"{parts}{total_text} ({result.applied_per_s:,.0f}/s)"


def row(result: ScenarioResult) -> str:
    others = "/".join(f"{result.cpu.get(name, math.nan):.0f}" for name in CPU_OTHERS)
    cells = (
        result.name,
        f"{result.rate:,.0f}",
        f"{result.sent:,}" + (f" ({result.errors} errors)" if result.errors else ""),
        f"{result.p50_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.max_ms:.0f}",
        followers_cell(result),
        applied_cell(result),
        f"{result.cpu.get('zapstream', math.nan):.0f}",
        others,
    )
    return "| " + " | ".join(cells) + " |"


def catch_up_rows(result: ScenarioResult) -> list[str]:
    """One row per follower of the scenario that had the backlog."""
    rows = []
    for follower in result.catching_up:
        behind, caught_up = result.catch_up[follower]
        whole = result.backlog_events / caught_up if caught_up else math.nan
        in_window = result.applied[follower] / result.window_s if result.window_s else math.nan
        cells = (
            result.name,
            follower,
            f"{result.backlog_events:,} ({result.backlog_write_s:.0f} s to append)",
            f"{since_text(result.window[0])} .. {since_text(result.window[1])}",
            since_text(behind),
            since_text(caught_up),
            f"{whole:,.0f}",
            f"{in_window:,.0f}",
        )
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def figures_of(results: list[ScenarioResult]) -> dict[str, float]:
    by_name = {result.name: result for result in results}
    idle, busy = by_name.get(IDLE), by_name.get(BUSY)
    figures = {
        "idle_p99_ms": idle.p99_ms if idle else math.nan,
        "busy_p99_ms": busy.p99_ms if busy else math.nan,
        "applied_per_s": busy.applied_per_s if busy else math.nan,
    }
    figures["busy_p99_ms_vs_idle"] = ratio(figures["busy_p99_ms"], figures["idle_p99_ms"])
    return figures


def render_report(
    options: Options, results: list[ScenarioResult], load: tuple[float, float]
) -> tuple[str, dict[str, float]]:
    """The tables and notes as markdown, and every figure by its result-line key."""
    busy = [result for result in results if result.catching_up]
    lines = [
        f"## the webhook's POST latency in `zapstream run` while its read models catch up: "
        f"{options.rate:g} POSTs/s open loop for {options.duration:g} s per scenario",
        "",
        f"{os.cpu_count()} CPUs, shared by everything below (nothing pinned); load average "
        f"{load[0]:.2f} at the start, {load[1]:.2f} at the end",
        "",
        "| scenario | rate/s | POSTs | p50 ms | p99 ms | max ms | followers catching up? "
        "| backlog events applied in the window | CPU % zapstream run "
        "| CPU % standin/generator/redis/postgres |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(row(result) for result in results),
    ]
    if busy:
        lines += [
            "",
            "## the catch-up, in seconds from `zapstream run` answering (its followers start "
            "with it)",
            "",
            "| scenario | follower | backlog | load window | last seen behind | caught up by "
            "| applied/s over the catch-up | applied/s in the window |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *(r for result in busy for r in catch_up_rows(result)),
        ]
    lines += [
        "",
        "- `zapstream run`: the webhook, every consumer group and the followers of the sessions "
        "(PostgreSQL), analytics (DuckDB) and archive (Parquet) projections in one process, on "
        "bench/e2e's topology (debounce window 0, send limits that never bind) with the rules "
        "responder; the Graph API stand-in of "
        "bench/e2e (its own process) takes the replies and posts each one's `sent` status back "
        "to the webhook (those POSTs are answered too, not timed). Redis database "
        f"{options.redis_url.rsplit('/', 1)[-1]}, PostgreSQL database `{options.database}`, a "
        "DuckDB file per scenario in a temporary directory.",
        "- Load: signed webhook POSTs of new conversations (one text each, current timestamps, "
        f"{options.numbers} business numbers), open loop, after a warm-up of 20 conversations. "
        "Latency: the answer's last byte read minus the request written, by the generator "
        "(raw asyncio, its own process). `replies` in the progress lines: conversations "
        "answered within the drain after the load (a check that the groups kept working).",
        "- Backlog: the seeded history of tests/projections/history.py (sessions with bursts, "
        "turns, replies and outcomes, statuses, handoffs), appended with pipelined XADD before "
        "`zapstream run` starts. Every consumer group is created at the backlog's end (`$`), "
        "so only the followers have it to work through. `all`: every follower catches up (a "
        "`run` restarted behind); `sessions`, `analytics`, `archive`: the other projections' "
        "checkpoints are put at the backlog's end first, so every follower runs in every "
        "scenario but only the one named catches up.",
        "- Applied: backlog entries covered by a follower's checkpoint, as it mirrors it into "
        f"Redis (`zapstream:projections`) after each commit, read every {POLL_S:g} s from "
        "outside the process and interpolated between readings; `caught up by` is the first "
        "reading with the whole backlog applied.",
        "- CPU: percent of one core during the load: `zapstream run` (its DuckDB threads "
        "included), the stand-in, this generator, Redis (server-wide: other databases count "
        "too) and the run's PostgreSQL backends. Two cores in all: at 200% nothing is left.",
    ]
    return "\n".join(lines), figures_of(results)


def result_line(figures: dict[str, float]) -> str:
    """`bench follow: key=value ...` with every figure of RESULT_KEYS, in that order."""
    return "bench follow: " + " ".join(f"{key}={number(figures[key])}" for key in RESULT_KEYS)
