"""PostgreSQL fixtures for the projection tests: a fresh database per test on the machine's
server (`pg`). A private cluster a test may stop and start is tests/conftest.py's `own_pg`."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest


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
