"""Fixtures of the chaos run: a PostgreSQL cluster of its own, which the schedule stops and
starts (its Redis is tests/conftest.py's `own_redis`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.projections.conftest import OwnPostgres


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A private cluster (pg_createcluster) on a free port; dropped after the test."""
    if not shutil.which("pg_createcluster"):
        pytest.fail("pg_createcluster is not installed: the chaos run builds its own cluster")
    server = OwnPostgres()
    server.create()
    try:
        yield server
    finally:
        server.drop()
