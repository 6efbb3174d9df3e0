"""The bench's own PostgreSQL database: created afresh before the sessions rebuild, dropped
after it. No other database on the server is touched."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg

TIMEOUT_S = 30.0


def database_url(server_url: str, database: str) -> str:
    """`server_url` with its database replaced by `database`."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


async def recreate_database(server_url: str, database: str, *, create: bool = True) -> None:
    """Drop `database` (its connections too), then create it empty unless `create` is False."""
    async with asyncio.timeout(TIMEOUT_S):
        connection = await asyncpg.connect(server_url)
        try:
            name = '"' + database.replace('"', '""') + '"'  # asyncpg binds values only
            await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            if create:
                await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()
