"""The processes of a scenario: the Graph API stand-in of bench/e2e (bench/e2e_peers/standin.py,
its own uvicorn process, posting each reply's `sent` status back to the webhook as Meta does)
and `zapstream run` (webhook, every group and the read models' followers in one process), with
the bench's Redis database, PostgreSQL database and a DuckDB file of the scenario's own.

Logs go to bench/out/follow-<process>-<scenario>.log; both processes are stopped when the
scenario ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec

from e2e_bench.sides import ACCESS_TOKEN, GRAPH_VERSION, PEERS
from e2e_bench.traffic import WEBHOOK_PATH
from follow_bench.options import Options
from ingest_bench.options import BENCH, OUT
from ingest_bench.servers import ServerSpec, running_servers
from replay_bench.database import database_url


class Running(msgspec.Struct, frozen=True, kw_only=True):
    webhook_url: str  # where the load goes
    standin_url: str  # the stand-in's base URL (its /bench routes)
    run_pid: int  # `zapstream run`
    standin_pid: int
    ready: float  # time.time() once `zapstream run` answered: its followers run from here


def environment(options: Options, directory: Path) -> dict[str, str]:
    """What `zapstream run` gets (the stand-in's URL aside) and the stand-in with it; the
    DuckDB file and the archive in `directory`."""
    return {
        "PYTHONPATH": str(BENCH),
        "REDIS_URL": options.redis_url,
        "DATABASE_URL": database_url(options.postgres_url, options.database),
        "DUCKDB_PATH": str(directory / "analytics.duckdb"),
        "ARCHIVE_DIR": str(directory / "archive"),
        "WHATSAPP_APP_SECRET": options.secret,
        "WHATSAPP_VERIFY_TOKEN": "bench-follow-verify-token",
        "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
        "RESPONDER": "rules",
        "ZAPSTREAM_LOG_LEVEL": "warning",
    }


@contextlib.contextmanager
def running_processes(config: Path, env: dict[str, str], scenario: str) -> Iterator[Running]:
    """Start the stand-in, then `zapstream run` on the topology at `config`; yield them."""
    OUT.mkdir(parents=True, exist_ok=True)
    standin_spec = ServerSpec(
        name=f"follow-standin-{scenario}",
        argv=[sys.executable, str(PEERS / "standin.py")],
        env=env,
    )
    with contextlib.ExitStack() as stack:
        standin = stack.enter_context(running_servers([standin_spec], OUT))[standin_spec.name]
        run_spec = ServerSpec(
            name=f"follow-zapstream-{scenario}",
            argv=[str(Path(sys.executable).with_name("zapstream")), "run"],
            env={
                **env,
                "WHATSAPP_API_URL": f"{standin.url}/{GRAPH_VERSION}",
                "ZAPSTREAM_CONFIG": str(config),
            },
        )
        server = stack.enter_context(running_servers([run_spec], OUT))[run_spec.name]
        ready = time.time()
        webhook_url = server.url + WEBHOOK_PATH
        httpx.post(f"{standin.url}/bench/webhook", params={"url": webhook_url}).raise_for_status()
        yield Running(
            webhook_url=webhook_url,
            standin_url=standin.url,
            run_pid=server.pid,
            standin_pid=standin.pid,
            ready=ready,
        )
