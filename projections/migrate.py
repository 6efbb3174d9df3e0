"""A PostgreSQL read model's database and schema: created when missing, migrated in order.

Migrations are numbered files in one folder per model (`001_name.sql`, ...). A schema records
the ones applied in its own `schema_migrations` table; the pending ones run in order, in one
transaction, under an advisory lock on the schema's name, so several processes starting at
once take turns (a promotion takes the same lock). Nothing here is specific to one model.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs in the dev extra yet
import msgspec
import structlog

log = structlog.get_logger()

_MIGRATION_NAME = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")


class Connecting(msgspec.Struct, frozen=True, kw_only=True):
    """How a model connects: seconds to connect and per statement, the session's settings."""

    timeout_s: float
    command_timeout_s: float
    server_settings: dict[str, str]


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    name: str
    sql: str


async def connect(
    url: str, connecting: Connecting, database: str | None = None
) -> asyncpg.Connection:
    async with asyncio.timeout(connecting.timeout_s * 2):
        connection: asyncpg.Connection = await asyncpg.connect(
            url,
            database=database,
            timeout=connecting.timeout_s,
            command_timeout=connecting.command_timeout_s,
            server_settings=connecting.server_settings,
        )
    return connection


def database_name(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = unquote(parts.path.lstrip("/"))
    return name or (query.get("dbname") or query.get("database") or [""])[0]


async def create_database(url: str, connecting: Connecting) -> None:
    """Create the URL's database when it is missing (another process may be doing the same)."""
    try:
        connection = await connect(url, connecting)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return
    name = database_name(url)
    admin = await connect(url, connecting, database="postgres")
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
        log.info("database_created", database=name)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # created meanwhile by another process
    finally:
        await admin.close()


def read_migrations(folder: Path) -> list[Migration]:
    """The migrations in `folder`, by number; a number used twice is an error."""
    found = []
    for path in folder.iterdir():
        matched = _MIGRATION_NAME.fullmatch(path.name)
        if matched:
            version = int(matched[1])
            sql = path.read_text(encoding="utf-8")
            found.append(Migration(version=version, name=matched[2], sql=sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{folder}: two migrations share a number")
    return found


async def lock_migrations(connection: asyncpg.Connection, schema: str) -> None:
    """The transaction's lock on `schema`'s structure: migrations and promotion take turns."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"zapstream:schema:{schema}"
    )


async def schema_exists(connection: asyncpg.Connection, schema: str) -> bool:
    found = await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    return found is not None


async def migrate(connection: asyncpg.Connection, schema: str, migrations: list[Migration]) -> None:
    """Apply the migrations `schema` lacks, in order, in one transaction under a lock."""
    quoted = f'"{schema}"'
    async with connection.transaction():
        await lock_migrations(connection, schema)
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL)"
        )
        rows = await connection.fetch(f"SELECT version FROM {quoted}.schema_migrations")
        applied = {row["version"] for row in rows}
        await connection.execute(f"SET LOCAL search_path TO {quoted}")
        for migration in migrations:
            if migration.version in applied:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            log.info("migration_applied", schema=schema, version=migration.version)
