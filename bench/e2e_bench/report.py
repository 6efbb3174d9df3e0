"""The report: one markdown table of every run, the issue's targets, and the result line,
`bench e2e: key=value ...`, a ratio named `<figure>_vs_<peer>`."""

from __future__ import annotations

import math
import os

from e2e_bench.measure import HELD_P99_MS, RunResult
from e2e_bench.options import Options
from e2e_bench.sides import SIDES, describe
from e2e_bench.stages import STAGES

P99_TARGET_MS = 50.0  # zapstream's p99 at the base rate stays under this
P99_VS_CELERY_TARGET = 3.0  # and within this many times the peer's
MAX_RATE_VS_CELERY_TARGET = 3.0  # its highest rate held is at least this many times the peer's

RESULT_KEYS = (
    "zapstream_p50_ms",
    "zapstream_p99_ms",
    "celery_p50_ms",
    "celery_p99_ms",
    "p99_ms_vs_celery",
    "direct_p50_ms",
    "direct_p99_ms",
    "zapstream_max_rate",
    "celery_max_rate",
    "direct_max_rate",
    "max_rate_vs_celery",
    "max_rate_vs_direct",
)
CPU_COLUMNS = ("server", "standin", "generator", "redis")


def ratio(value: float, peer: float) -> float:
    return value / peer if peer else math.nan


def max_rate_held(results: list[RunResult], side: str) -> float:
    """The highest step rate of `side` held (0 when none was)."""
    return max(
        (r.rate for r in results if r.side == side and r.kind == "step" and r.held), default=0
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def row(result: RunResult) -> str:
    cpu = "/".join(f"{result.cpu.get(name, math.nan):.0f}" for name in CPU_COLUMNS)
    if result.held:
        held = "yes"
    elif result.missing or result.errors:
        held = f"no: {result.missing} missing, {result.errors} errors"
    else:
        held = "no: p99"
    cells = (
        result.side,
        f"{result.kind} {result.duration:g} s",
        f"{result.rate:,.0f}",
        f"{result.sent:,}",
        f"{result.replied:,}",
        f"{result.p50_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.max_ms:.0f}",
        f"{result.post_p99_ms:.1f}",
        f"{result.reads:,}",
        cpu,
        held,
    )
    return "| " + " | ".join(cells) + " |"


def render_stages(results: list[RunResult]) -> list[str]:
    """zapstream's latency by stage (stages.py), for each of its runs."""
    header = " | ".join(f"{stage} p50/p99 ms" for stage in STAGES)
    lines = [
        "## where zapstream's time goes: each conversation cut at its entries in the log",
        "",
        f"| run | rate/s | {header} |",
        "| --- | --- |" + " --- |" * len(STAGES),
    ]
    for result in results:
        if result.stages:
            cells = " | ".join(
                f"{p50:.1f} / {p99:.1f}" for p50, p99 in (result.stages[s] for s in STAGES)
            )
            lines.append(f"| {result.kind} {result.duration:g} s | {result.rate:,.0f} | {cells} |")
    return [
        *lines,
        "",
        "webhook: POST written -> message.received in the log; debounce: -> turn.ready; "
        "respond: -> reply.generated (the mark-read/typing POST included); send: -> the reply "
        "at the stand-in. Entry ids have ms resolution.",
    ]


def render_report(
    options: Options, results: list[RunResult], load: tuple[float, float]
) -> tuple[str, dict[str, float]]:
    """The table and the targets as markdown, and every figure by its result-line key."""
    figures: dict[str, float] = {}
    for side in SIDES:
        main = next(r for r in results if r.side == side and r.kind == "main")
        figures[f"{side}_p50_ms"], figures[f"{side}_p99_ms"] = main.p50_ms, main.p99_ms
        figures[f"{side}_max_rate"] = max_rate_held(results, side)
    figures["p99_ms_vs_celery"] = ratio(figures["zapstream_p99_ms"], figures["celery_p99_ms"])
    figures["max_rate_vs_celery"] = ratio(figures["zapstream_max_rate"], figures["celery_max_rate"])
    figures["max_rate_vs_direct"] = ratio(figures["zapstream_max_rate"], figures["direct_max_rate"])
    wanted = MAX_RATE_VS_CELERY_TARGET * figures["celery_max_rate"]
    base = f"{options.rate:g}/s"
    lines = [
        f"## webhook to reply: {options.rate:g} new conversations/s for {options.duration:g} s, "
        f"then steps of {options.step_duration:g} s doubling from {options.first_rate:g}/s until "
        f"p99 >= {HELD_P99_MS:g} ms or replies fall behind",
        "",
        f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end, on "
        f"{os.cpu_count()} CPUs (shared with whatever else runs)",
        "",
        "| path | run | rate/s | sent | replied | p50 ms | p99 ms | max ms | POST p99 ms "
        "| mark-read | CPU % server/standin/generator/redis | held? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(row(result) for result in results),
        "",
        "| target (issue) | measured | verdict |",
        "| --- | --- | --- |",
        f"| zapstream p99 at {base} < {P99_TARGET_MS:g} ms | "
        f"{figures['zapstream_p99_ms']:.1f} ms | "
        f"{verdict(figures['zapstream_p99_ms'] < P99_TARGET_MS)} |",
        f"| zapstream p99 at {base} <= {P99_VS_CELERY_TARGET:g}x Celery's | "
        f"{figures['p99_ms_vs_celery']:.2f}x ({figures['celery_p99_ms']:.1f} ms) | "
        f"{verdict(figures['p99_ms_vs_celery'] <= P99_VS_CELERY_TARGET)} |",
        f"| highest rate held (p99 < {HELD_P99_MS:g} ms) >= {MAX_RATE_VS_CELERY_TARGET:g}x "
        f"Celery's | {figures['zapstream_max_rate']:,.0f}/s vs {figures['celery_max_rate']:,.0f}/s"
        f" = {figures['max_rate_vs_celery']:.2f}x | "
        f"{verdict(figures['max_rate_vs_celery'] >= MAX_RATE_VS_CELERY_TARGET)} |",
        f"| that rate ({wanted:,.0f}/s) within the machine's ceiling (the direct path's "
        f"highest rate held) | ceiling {figures['direct_max_rate']:,.0f}/s | "
        f"{'yes' if figures['direct_max_rate'] >= wanted else 'no: no design holds it here'} |",
        "",
        f"- zapstream: {describe('zapstream', options)}; debounce window 0, send limits that "
        f"never bind, {options.numbers} business numbers, one customer per conversation.",
        f"- celery (peer): {describe('celery', options)}; the task answers by keyword and POSTs.",
        f"- direct (ceiling): {describe('direct', options)}; the same answer, no log, no queue "
        "between processes, no worker, no mark-read: no design does less on this harness, so "
        "its highest rate held is the machine's.",
        "- Latency: the stand-in's arrival of the reply minus the write of the webhook POST, "
        "open-loop. zapstream also sends one mark-read/typing request per turn before the "
        "reply (counted, not timed); the peer sends none. The stand-in posts each reply's "
        "`sent` status back to the webhook under test, as Meta does.",
        "- Placement: nothing is pinned; the side under test, the stand-in (its own uvicorn "
        "process), Redis and the load generator (raw asyncio, open-loop) share the CPUs.",
        "- CPU: percent of one core during the load; server = `zapstream serve` + `work`, "
        "or the peer's webhook + worker with its pool; redis is server-wide (other databases "
        "count too).",
        f"- held: every POST answered 200, every reply in within {options.drain:g} s after the "
        f"last POST, p99 < {HELD_P99_MS:g} ms. Each run starts every process afresh on a "
        "flushed database and is warmed up first.",
        "",
        *render_stages(results),
    ]
    return "\n".join(lines), figures


def number(value: float) -> str:
    """Whole from 100 up, else three significant digits."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def result_line(figures: dict[str, float]) -> str:
    """`bench e2e: key=value ...` with every figure of RESULT_KEYS, in that order."""
    return "bench e2e: " + " ".join(f"{key}={number(figures[key])}" for key in RESULT_KEYS)
