"""The sides under test, each started fresh for every run on a flushed database.

Per run: the Graph API stand-in (bench/e2e_peers/standin.py, its own uvicorn process); then
zapstream: `zapstream serve` (the webhook) and --work-processes (2) `zapstream work` (every
group each), as the old design's path has its webhook and a worker with a pool of two
processes (the read models, which `zapstream run` would add, are not on the path from webhook
to reply); or the peer: the FastAPI webhook (bench/e2e_peers/celery_app.py, one uvicorn
process) and a Celery worker; or the ceiling: one webhook process that POSTs each answer from
the request (bench/e2e_peers/direct_app.py), the least any design can do on this harness;
then the stand-in is told the webhook's URL, where it posts each reply's `sent` status. Logs go to
bench/out/e2e-<process>-<run>.log. Every process is stopped when the run ends, whatever
happened.

Placement: nothing is pinned. The two CPUs are shared by the side under test, the stand-in,
Redis and the load generator (this process), as they would be on one small machine; the
stand-in and the generator are separate processes so that neither one's event loop delays
the other's clock readings. bench/e2e reports the CPU each used.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec

from e2e_bench.options import Options
from e2e_bench.progress import log_progress
from e2e_bench.traffic import WEBHOOK_PATH
from ingest_bench import benchdb
from ingest_bench.options import BENCH, OUT
from ingest_bench.servers import ServerSpec, running_servers, stop

PEERS = BENCH / "e2e_peers"
SIDES = ("zapstream", "celery", "direct")  # direct: the ceiling (e2e_peers/direct_app.py)
ACCESS_TOKEN = "bench-token"
GRAPH_VERSION = "v25.0"


class RunningSide(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # zapstream or celery
    webhook_url: str  # where the load goes
    standin_url: str  # the stand-in's base URL (its /bench routes)
    pids: dict[str, list[int]]  # process trees by role: server (webhook + workers), standin


def describe(side: str, options: Options) -> str:
    """How a side runs, for the report."""
    if side == "zapstream":
        works = options.work_processes
        return (
            f"`zapstream serve` + {works} `zapstream work` process{'es' if works > 1 else ''} "
            "(every group; uvloop)"
        )
    if side == "direct":
        return "one Starlette process (uvicorn, uvloop) POSTing each answer from the request"
    return (
        "FastAPI webhook (uvicorn, uvloop) + `celery worker --pool "
        f"{options.celery_pool} --concurrency {options.celery_concurrency}`, Redis broker"
    )


def _environment(options: Options) -> dict[str, str]:
    """What every process of a run gets (the server also the stand-in's URL)."""
    return {
        "PYTHONPATH": str(BENCH),
        "REDIS_URL": options.redis_url,
        "BENCH_BROKER_URL": options.redis_url,
        "WHATSAPP_APP_SECRET": options.secret,
        "WHATSAPP_VERIFY_TOKEN": "bench-verify-token",
        "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
        "RESPONDER": "rules",
        "ZAPSTREAM_LOG_LEVEL": "warning",
    }


def _server_spec(side: str, config: Path, env: dict[str, str], run: str) -> ServerSpec:
    python = sys.executable
    if side == "zapstream":
        argv = [str(Path(python).with_name("zapstream")), "serve"]
        return ServerSpec(
            name=f"e2e-zapstream-{run}", argv=argv, env={**env, "ZAPSTREAM_CONFIG": str(config)}
        )
    if side == "direct":
        argv = [python, str(PEERS / "direct_app.py")]
        return ServerSpec(name=f"e2e-direct-{run}", argv=argv, env=env)
    argv = [python, str(PEERS / "celery_app.py")]
    return ServerSpec(name=f"e2e-celery-webhook-{run}", argv=argv, env=env)


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log_name: str) -> Iterator[int]:
    """A worker process of a side, logging to bench/out; its pid. Stopped on the way out."""
    with (OUT / log_name).open("wb") as sink:
        worker = subprocess.Popen(
            argv,
            cwd=OUT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker.pid
    finally:
        stop(worker)


def zapstream_work(
    env: dict[str, str], config: Path, run: str
) -> contextlib.AbstractContextManager[int]:
    """`zapstream work`: every group of the bench's topology."""
    argv = [str(Path(sys.executable).with_name("zapstream")), "work"]
    return _process(argv, {**env, "ZAPSTREAM_CONFIG": str(config)}, f"e2e-zapstream-work-{run}.log")


def celery_worker(
    options: Options, env: dict[str, str], run: str
) -> contextlib.AbstractContextManager[int]:
    """A Celery worker of the peer's app. Ready once it answers the warm-up."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "e2e_peers.celery_app",
        "worker",
        "--pool",
        options.celery_pool,
        "--concurrency",
        str(options.celery_concurrency),
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "warning",
    ]
    return _process(argv, env, f"e2e-celery-worker-{run}.log")


@contextlib.contextmanager
def running_side(side: str, options: Options, config: Path, run: str) -> Iterator[RunningSide]:
    """Flush the bench's database, start the stand-in and the side, yield them, stop all."""
    benchdb.flush(benchdb.connect(options.redis_url))
    OUT.mkdir(parents=True, exist_ok=True)
    env = _environment(options)
    standin_spec = ServerSpec(
        name=f"e2e-standin-{run}", argv=[sys.executable, str(PEERS / "standin.py")], env=env
    )
    with contextlib.ExitStack() as stack:
        standin = stack.enter_context(running_servers([standin_spec], OUT))[standin_spec.name]
        env = {**env, "WHATSAPP_API_URL": f"{standin.url}/{GRAPH_VERSION}"}
        spec = _server_spec(side, config, env, run)
        server = stack.enter_context(running_servers([spec], OUT))[spec.name]
        pids = {"server": [server.pid], "standin": [standin.pid]}
        if side == "celery":
            pids["server"].append(stack.enter_context(celery_worker(options, env, run)))
        elif side == "zapstream":
            for number in range(options.work_processes):
                work = zapstream_work(env, config, f"{run}-{number}")
                pids["server"].append(stack.enter_context(work))
        webhook_url = server.url + WEBHOOK_PATH
        where = httpx.post(f"{standin.url}/bench/webhook", params={"url": webhook_url})
        where.raise_for_status()
        log_progress(f"{side} ready: {describe(side, options)}")
        yield RunningSide(name=side, webhook_url=webhook_url, standin_url=standin.url, pids=pids)
