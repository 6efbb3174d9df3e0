"""PostgreSQL fixtures for the projection tests: a fresh database per test on the machine's
server (`pg`), and a private cluster a test may stop and start (`own_pg`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

VERSION = "15"


def _admin_url() -> str:
    return os.environ.get(
        "ZAPSTREAM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


async def _drop_database(admin: str, name: str) -> None:
    connection = await asyncpg.connect(admin, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    """The URL of a database that does not exist yet (the target's start() creates it),
    on the machine's server; dropped after the test."""
    admin = _admin_url()
    try:
        connection = await asyncpg.connect(admin, timeout=5)
    except (OSError, asyncpg.PostgresError) as err:
        pytest.fail(f"no PostgreSQL answers at {admin} ({err}): run `make test`", pytrace=False)
    await connection.close()
    name = f"zapstream_test_{uuid.uuid4().hex[:12]}"
    yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    await _drop_database(admin, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (pg_createcluster), trusted on loopback."""

    def __init__(self) -> None:
        self.name = f"zs_{uuid.uuid4().hex[:10]}"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/zapstream"

    def create(self) -> None:
        _run(
            "pg_createcluster",
            VERSION,
            self.name,
            "-p",
            str(self.port),
            "--",
            "--auth=trust",
        )
        self.start()

    def start(self) -> None:
        _run("pg_ctlcluster", VERSION, self.name, "start")

    def stop(self, mode: str = "fast") -> None:
        """Open connections are cut, as when the server goes away; `immediate` is a crash
        (the next start recovers)."""
        _run("pg_ctlcluster", VERSION, self.name, "stop", "-m", mode)

    def drop(self) -> None:
        _run("pg_dropcluster", "--stop", VERSION, self.name)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A private cluster the test may stop and start; dropped after the test."""
    if not shutil.which("pg_createcluster"):
        pytest.fail("pg_createcluster is not installed: this test builds its own cluster")
    server = OwnPostgres()
    server.create()
    try:
        yield server
    finally:
        server.drop()
