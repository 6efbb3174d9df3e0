"""One run: a side started fresh, warmed up, loaded open-loop at one rate, drained, measured.

A conversation's latency is the stand-in's arrival time of the reply to its customer minus
the time its webhook POST was written: time.time() in two processes of one machine, one clock.
The mark-read/typing request zapstream sends before each reply is counted, not timed.
Replies still missing `drain` seconds after the last POST fell behind.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

import httpx
import msgspec

from e2e_bench.cpu import CpuMeter
from e2e_bench.options import Options
from e2e_bench.percentiles import percentile
from e2e_bench.progress import log_progress
from e2e_bench.sides import RunningSide, running_side
from e2e_bench.stages import stage_percentiles
from e2e_bench.traffic import Post, build_conversations, send_open_loop
from ingest_bench import benchdb
from process_bench.loop import run_like_work
from zapstream.topology import load_topology

WARM_UP = 20  # conversations before the clock starts: every process has done one of each
WARM_UP_RATE = 20.0
WARM_UP_FIRST = 10**7  # the warm-up's conversation numbers start here, after the load's
WARM_UP_TIMEOUT_S = 30.0  # a Celery worker boots within this
POLL_S = 0.1  # how often the stand-in's arrivals are read while waiting for replies
SEND_LAG_WARNING_MS = 5.0  # POSTs later than this against the schedule: the generator lags
HELD_P99_MS = 100.0  # a rate is held while the p99 stays under this and nothing falls behind

Arrival = tuple[str, str, float]  # kind, to, at: as bench/e2e_peers/standin.py sends them


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One run to make."""

    side: str  # zapstream or celery
    kind: str  # main (the long run at the base rate) or step
    rate: float  # conversations/s
    duration: float  # seconds of load
    number: int  # the run's number in the whole bench: its customers are its own


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    side: str
    kind: str
    rate: float
    duration: float
    sent: int  # POSTs answered 200
    errors: int  # POSTs answered otherwise, or not at all
    error_statuses: dict[int, int]  # HTTP status -> POSTs (0: no answer, the connection failed)
    replied: int  # conversations whose reply arrived within the drain
    p50_ms: float  # webhook-to-reply latency of the replied ones
    p99_ms: float
    max_ms: float
    post_p99_ms: float  # the webhook's own answer time
    send_lag_p99_ms: float  # how late the generator wrote the POSTs against the schedule
    behind_at_end: int  # conversations unanswered when the last POST was written
    reads: int  # mark-read/typing requests the stand-in got
    other_requests: int  # requests the stand-in got that were neither reply nor mark-read
    cpu: dict[str, float]  # percent of one core per process (tree) during the load
    stages: dict[str, tuple[float, float]]  # zapstream: stage -> (p50 ms, p99 ms) (stages.py)

    @property
    def missing(self) -> int:
        return self.sent - self.replied

    @property
    def held(self) -> bool:
        return not self.errors and not self.missing and self.p99_ms < HELD_P99_MS


async def read_arrivals(control: httpx.AsyncClient, standin_url: str, since: int) -> list[Arrival]:
    response = await control.get(f"{standin_url}/bench/arrivals", params={"since": since})
    response.raise_for_status()
    return [(kind, to, at) for kind, to, at in msgspec.json.decode(response.content)]


async def wait_for_replies(
    control: httpx.AsyncClient, standin_url: str, customers: set[str], since: int, timeout: float
) -> list[Arrival]:
    """The arrivals from the `since`-th on, once every customer has a reply or `timeout` passed."""
    waiting = {f"+{customer}" for customer in customers}
    arrivals: list[Arrival] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            new = await read_arrivals(control, standin_url, since + len(arrivals))
        except httpx.TimeoutException:
            # A stand-in starved of CPU by a rate the machine cannot hold: ask again, until
            # the deadline says the replies fell behind.
            log_progress("  the stand-in was slow to list its arrivals; asking again")
            new = []
        arrivals += new
        waiting.difference_update(to for kind, to, _ in new if kind == "text")
        if not waiting or time.monotonic() > deadline:
            return arrivals
        await asyncio.sleep(POLL_S)  # polling the stand-in, with a deadline


def first_replies(arrivals: list[Arrival]) -> dict[str, float]:
    """When the first reply to each customer arrived, by its `to` ("+<customer>")."""
    first: dict[str, float] = {}
    for kind, to, at in arrivals:
        if kind == "text":
            first.setdefault(to, at)
    return first


def summarise(
    plan: Plan,
    posts: list[Post],
    arrivals: list[Arrival],
    cpu: dict[str, float],
    stages: dict[str, tuple[float, float]],
) -> RunResult:
    """The run's figures from what the generator and the stand-in recorded."""
    first_reply = first_replies(arrivals)
    ok = [post for post in posts if post.status == 200]
    latencies = sorted(
        1000 * (first_reply[f"+{post.customer}"] - post.sent)
        for post in ok
        if f"+{post.customer}" in first_reply
    )
    load_end = max(post.sent for post in posts)
    answered_by_end = sum(1 for at in first_reply.values() if at <= load_end)
    posts_ms = sorted(1000 * (post.answered - post.sent) for post in ok)
    lag_ms = sorted(1000 * (post.sent - post.due) for post in posts)
    return RunResult(
        side=plan.side,
        kind=plan.kind,
        rate=plan.rate,
        duration=plan.duration,
        sent=len(ok),
        errors=len(posts) - len(ok),
        error_statuses=dict(Counter(post.status for post in posts if post.status != 200)),
        replied=len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else math.nan,
        post_p99_ms=percentile(posts_ms, 0.99),
        send_lag_p99_ms=percentile(lag_ms, 0.99),
        behind_at_end=len(posts) - answered_by_end,
        reads=sum(1 for arrival_kind, _, _ in arrivals if arrival_kind == "read"),
        other_requests=sum(1 for arrival_kind, _, _ in arrivals if arrival_kind == "other"),
        cpu=cpu,
        stages=stages,
    )


async def load_and_drain(
    plan: Plan, running: RunningSide, options: Options, meter: CpuMeter
) -> tuple[list[Post], list[Arrival], dict[str, float]]:
    """Warm up, then the load and its drain: the POSTs, the arrivals after the warm-up, and
    the CPU used during the load."""
    count = max(1, round(plan.rate * plan.duration))
    url, secret, numbers = running.webhook_url, options.secret, options.numbers
    warm_ups = build_conversations(url, secret, plan.number, WARM_UP_FIRST, WARM_UP, numbers)
    conversations = build_conversations(url, secret, plan.number, 0, count, numbers)
    async with httpx.AsyncClient(timeout=10) as control:
        await send_open_loop(url, warm_ups, WARM_UP_RATE)
        customers = {conversation.customer for conversation in warm_ups}
        warm = await wait_for_replies(control, running.standin_url, customers, 0, WARM_UP_TIMEOUT_S)
        replied = len(first_replies(warm))
        if replied < WARM_UP:
            raise RuntimeError(
                f"{running.name}: {replied} of {WARM_UP} warm-up replies after "
                f"{WARM_UP_TIMEOUT_S:g} s; see bench/out/e2e-*.log"
            )
        meter.start()
        posts = await send_open_loop(url, conversations, plan.rate)
        cpu = meter.stop()
        customers = {conversation.customer for conversation in conversations}
        arrivals = await wait_for_replies(
            control, running.standin_url, customers, len(warm), options.drain
        )
    return posts, arrivals, cpu


def measure_run(plan: Plan, options: Options, config: Path) -> RunResult:
    """One run: the side started afresh, warmed up, loaded, drained, stopped."""
    log_progress(f"{plan.side} {plan.kind}: {plan.rate:g} conversations/s for {plan.duration:g} s")
    client = benchdb.connect(options.redis_url)
    with running_side(plan.side, options, config, f"{plan.kind}-{plan.rate:g}") as running:
        meter = CpuMeter(running.pids, client)
        posts, arrivals, cpu = run_like_work(load_and_drain(plan, running, options, meter))
    stages: dict[str, tuple[float, float]] = {}
    if plan.side == "zapstream":  # what the log says of each conversation, before the next flush
        stages = stage_percentiles(client, load_topology(config), posts, first_replies(arrivals))
    client.close()
    result = summarise(plan, posts, arrivals, cpu, stages)
    log_progress(progress_line(result))
    if result.send_lag_p99_ms > SEND_LAG_WARNING_MS:
        log_progress(
            f"  WARNING the generator wrote its POSTs up to {result.send_lag_p99_ms:.0f} ms late "
            "(p99): it was short of CPU, the rate it sent was lower than asked"
        )
    return result


def progress_line(result: RunResult) -> str:
    """One line per run: every figure measured, and the verdict."""
    errors = ", ".join(
        f"{count} x {status or 'no answer'}" for status, count in result.error_statuses.items()
    )
    parts = [
        f"  {result.side} {result.rate:g}/s: sent {result.sent}, replied {result.replied}, "
        f"errors {result.errors}" + (f" ({errors})" if errors else ""),
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms",
        f"POST p99 {result.post_p99_ms:.1f} ms, behind at end {result.behind_at_end}, "
        f"send lag p99 {result.send_lag_p99_ms:.1f} ms",
        "CPU % of one core: "
        + ", ".join(f"{name} {percent:.0f}" for name, percent in result.cpu.items()),
    ]
    if result.stages:
        parts.append(
            "stages p50/p99 ms: "
            + ", ".join(f"{name} {p50:.1f}/{p99:.1f}" for name, (p50, p99) in result.stages.items())
        )
    return "; ".join(parts) + (": held" if result.held else ": NOT held")
