"""Fixtures: factories over real services, cleaned per test (STYLE.md rule 22).

Redis: ZAPSTREAM_TEST_REDIS_URL, else REDIS_URL with database 15, else the local server's
database 15; when none answers and `docker info` does, a testcontainers Redis. A test that
needs a server and finds none fails loudly: it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest
import redis as sync_redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from redis.asyncio import Redis

from ingest.app import create_app
from tests.notifications import SECRET, VERIFY_TOKEN
from tests.processors.workers import Workers
from tests.servers import OwnPostgres, OwnRedis, Webhook
from zapstream.connections import open_redis
from zapstream.logs import configure_logging
from zapstream.metrics import Metrics
from zapstream.settings import Settings
from zapstream.topology import Topology, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[1]

# Property tests: `ci`, the default, draws the same examples on every run (derandomize: a
# failure reproduces without a seed) with no deadline, since two busy cores make per-example
# timing noise; HYPOTHESIS_PROFILE=dev draws fresh random examples, five times as many.
hypothesis_settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=200,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "dev", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _answers(url: str) -> bool:
    try:
        return bool(sync_redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except sync_redis.RedisError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("info", json=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("ZAPSTREAM_TEST_REDIS_URL") or _with_db(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 15
    )
    if _answers(url):
        yield url
        return
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0
    ):
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.0") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/15"
        return
    pytest.fail(
        f"no Redis answers at {url} and Docker is not available: run `make test`", pytrace=False
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the test database, flushed before the test."""
    async with open_redis(redis_url) as client:
        await client.flushdb()
        yield client


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "app_secrets": (SECRET,),
            "verify_token": VERIFY_TOKEN,
            "access_token": "test-access-token",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_topology() -> Callable[..., Topology]:
    """The repository's streams.yaml with sections replaced, e.g. dedup={"window": 1}."""
    base = load_topology(ROOT / "streams.yaml")

    def make(**sections: Any) -> Topology:
        if not sections:
            return base
        builtins = msgspec.to_builtins(base, enc_hook=float)
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(builtins.get(name), dict):
                builtins[name] = {**builtins[name], **value}
            else:
                builtins[name] = value
        return parse_topology(msgspec.json.encode(builtins), source="test topology")

    return make


@pytest.fixture
async def start_webhook() -> AsyncIterator[Callable[..., Any]]:
    """Start the real webhook app on a free loopback port; stopped after the test."""
    started: list[Webhook] = []

    async def start(
        settings: Settings, topology: Topology, metrics: Metrics | None = None
    ) -> Webhook:
        server = Webhook(create_app(settings, topology, metrics or Metrics()))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def webhook(
    start_webhook: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_topology: Callable[..., Topology],
    redis: Redis,
) -> Webhook:
    """The webhook with the test settings and the repository's topology, on a flushed Redis."""
    server: Webhook = await start_webhook(make_settings(), make_topology())
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:
        yield client


@pytest.fixture
def workers(redis_url: str, redis: Redis, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on the test database; any left running are killed afterwards."""
    pool = Workers(redis_url, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A private PostgreSQL cluster the test may stop and start; dropped after the test."""
    if not shutil.which("pg_createcluster"):
        pytest.fail("pg_createcluster is not installed: this test builds its own cluster")
    server = OwnPostgres()
    server.create()
    try:
        yield server
    finally:
        server.drop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own, on another port, which the test may stop."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: this test starts its own", pytrace=False)
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _pg_admin_url() -> str:
    return os.environ.get(
        "ZAPSTREAM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database on the machine's server, dropped after the test."""
    admin = _pg_admin_url()
    try:
        connection = await asyncpg.connect(admin, timeout=5)
    except (OSError, asyncpg.PostgresError) as err:
        pytest.fail(f"no PostgreSQL answers at {admin} ({err}): run `make test`", pytrace=False)
    name = f"zapstream_test_{uuid.uuid4().hex[:12]}"
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
