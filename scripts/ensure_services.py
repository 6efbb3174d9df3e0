"""Make sure Redis and PostgreSQL answer before `make run` and `make test`.

For each service, in order: the URL from the environment (REDIS_URL, DATABASE_URL) must
answer; else the local server on its standard port, started with this machine's own command
when it is stopped; else, when `docker info` answers, the tests start containers themselves
(testcontainers) and `make run` uses compose.yaml; else one line says what is missing.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import time

import asyncpg
import redis.asyncio as aioredis

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
START_REDIS = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


async def redis_answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        return True  # the server answers; zapstream creates its database (migrate.py)
    except Exception:
        return False
    await conn.close()
    return True


def start_local_redis() -> bool:
    if not shutil.which("redis-server"):
        return False
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    return subprocess.run(START_REDIS, check=False).returncode == 0


def start_local_postgres() -> bool:
    versions = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))
    if not versions or not shutil.which("pg_ctlcluster"):
        return False
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    return subprocess.run(command, check=False).returncode == 0


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return result.returncode == 0


async def wait_for(check: object, url: str, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check(url):  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


async def ensure(name: str, env: str, local: str, check: object, start: object) -> str | None:
    """None when the service answers (after starting it if need be), else why not."""
    if os.environ.get(env):
        if await check(os.environ[env]):  # type: ignore[operator]
            return None
        return f"{name}: {env} is set but does not answer"
    if await check(local):  # type: ignore[operator]
        return None
    if start() and await wait_for(check, local):  # type: ignore[operator]
        print(f"ensure_services: started the local {name}", file=sys.stderr)
        return None
    if docker_answers():
        print(
            f"ensure_services: no local {name}; the tests will use testcontainers", file=sys.stderr
        )
        return None
    return (
        f"{name}: nothing answers at {local}, it could not be started, and Docker is not available"
    )


async def main() -> int:
    problems = [
        problem
        for problem in (
            await ensure("Redis", "REDIS_URL", LOCAL_REDIS, redis_answers, start_local_redis),
            await ensure(
                "PostgreSQL", "DATABASE_URL", LOCAL_POSTGRES, postgres_answers, start_local_postgres
            ),
        )
        if problem
    ]
    for problem in problems:
        print(f"ensure_services: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
