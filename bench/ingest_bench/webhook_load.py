"""The HTTP figures: three servers, one uvicorn process each, under the same wrk load.

bare: a Starlette app that answers 200 (the ceiling); celery: the old design, FastAPI verifying
the signature, parsing the JSON and calling a Celery task's `.delay(payload)` on a Redis broker
in the bench's database (the peer); zapstream: `zapstream serve`. Every run starts on a flushed
database and sends the corpus from its first line, so no wamid repeats within a run.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import msgspec
import redis

from ingest_bench import benchdb
from ingest_bench.options import BENCH, OUT, Options
from ingest_bench.progress import log_progress
from ingest_bench.servers import ServerSpec, running_servers
from ingest_bench.wrk import WrkResult, run_wrk
from zapstream.topology import Topology

PEERS = BENCH / "ingest_peers"
WRK_SCRIPT = BENCH / "ingest_corpus.lua"
WARM_UP_S = 1


class ServerFigures(msgspec.Struct, frozen=True, kw_only=True):
    """One server's runs, and the event loop its process runs on."""

    name: str
    event_loop: str
    load: str  # the wrk options of each run
    runs: list[WrkResult]

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in self.runs))


def wrk_options(options: Options) -> str:
    return f"wrk -t{options.threads} -c{options.connections} -d{options.duration}s"


def server_specs(options: Options) -> list[ServerSpec]:
    """How each server starts: one uvicorn process with `zapstream serve`'s uvicorn options."""
    python = sys.executable
    env = {"WHATSAPP_APP_SECRET": options.secret}
    zapstream = [str(Path(python).with_name("zapstream")), "serve"]
    return [
        ServerSpec(name="bare", argv=[python, str(PEERS / "bare.py")], env=env),
        ServerSpec(name="celery", argv=[python, str(PEERS / "celery_app.py")],
                   env={**env, "BENCH_BROKER_URL": options.redis_url}),
        ServerSpec(
            name="zapstream", argv=zapstream,
            env={**env, "REDIS_URL": options.redis_url, "WHATSAPP_VERIFY_TOKEN": "x",
                 "ZAPSTREAM_CONFIG": str(options.config.resolve()),
                 "ZAPSTREAM_LOG_LEVEL": "warning"},
        ),
    ]


def check_run(name: str, result: WrkResult, client: redis.Redis, topology: Topology) -> list[str]:
    """What went wrong in one run: non-2xx answers, socket errors, a corpus that ran out, fewer
    entries appended (zapstream) or tasks queued (celery) than 2xx answers."""
    problems = []
    if result.non2xx:
        problems.append(f"{result.non2xx} non-2xx answers")
    if result.socket_errors:
        problems.append(f"{result.socket_errors} socket errors or timeouts")
    if result.wraps:
        problems.append(f"the corpus ran out {result.wraps} times (repeated wamids)")
    answered = result.requests - result.non2xx
    # Requests in flight when wrk stops may be done without being counted: more is fine.
    if name == "zapstream":
        appended = benchdb.appended_messages(client, topology)
        if appended < answered:
            problems.append(f"{appended} entries appended for {answered} 2xx answers")
    if name == "celery":
        queued = client.llen("celery")
        if queued < answered:
            problems.append(f"{queued} Celery messages queued for {answered} 2xx answers")
    return problems


def bench_webhooks(options: Options, corpus: Path, topology: Topology) -> dict[str, ServerFigures]:
    """Run each server `options.runs` times, interleaved (bare, celery, zapstream, bare, ...) so
    a slow moment of the machine does not fall on one server's runs alone."""
    client = benchdb.connect(options.redis_url)
    specs = server_specs(options)
    runs: dict[str, list[WrkResult]] = {spec.name: [] for spec in specs}

    def load(url: str, duration: int) -> WrkResult:
        return run_wrk(url, corpus, WRK_SCRIPT, threads=options.threads,
                       connections=options.connections, duration=duration)

    with running_servers(specs, OUT) as servers:
        loops = {name: server.event_loop for name, server in servers.items()}
        if len(set(loops.values())) > 1:
            log_progress(f"WARNING the servers run on different event loops: {loops}")
        for spec in specs:
            benchdb.flush(client)
            log_progress(f"warming up {spec.name} ({WARM_UP_S} s)")
            load(servers[spec.name].url, WARM_UP_S)
        for number in range(1, options.runs + 1):
            for spec in specs:
                benchdb.flush(client)
                log_progress(f"run {number}/{options.runs}: {spec.name}, {options.duration} s")
                result = load(servers[spec.name].url, options.duration)
                problems = check_run(spec.name, result, client, topology)
                log_progress(f"  {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                             f"p99 {result.p99_ms:.2f} ms, {result.requests} requests")
                for problem in problems:
                    log_progress(f"  WARNING {spec.name} run {number}: {problem}")
                runs[spec.name].append(result.with_problems(problems))
    benchdb.flush(client)
    return {name: ServerFigures(name=name, event_loop=loops[name], load=wrk_options(options),
                                runs=results) for name, results in runs.items()}
