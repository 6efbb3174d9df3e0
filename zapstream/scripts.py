"""Lua scripts run with EVALSHA, falling back to EVAL on NOSCRIPT.

A script is never loaded ahead of time: EVAL both runs it and caches it, so a Redis restarted
without persistence, or a new Redis Cluster primary, needs no loading step. NOSCRIPT means the
script did not run, so running it again never applies it twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Call = tuple[Sequence[Any], Sequence[Any]]  # (keys, args)


class Script:
    """One Lua file, read once; `run` and `run_many` execute it."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.text = path.read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode("utf-8")).hexdigest()

    async def run(self, redis: Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self.text, len(keys), *keys, *args)

    async def run_many(self, redis: Redis, calls: Sequence[Call]) -> list[Any]:
        """Run once per (keys, args), pipelined in one round trip; raises the first error."""
        if len(calls) == 1:
            return [await self.run(redis, *calls[0])]
        pipe = redis.pipeline(transaction=False)
        for keys, args in calls:
            # As a raw command: redis-py's cluster pipeline refuses its evalsha() method, yet
            # routes EVALSHA by its first key like any other command.
            pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError):
                results[index] = await self.run(redis, *calls[index])
            elif isinstance(result, Exception):
                raise result
        return results
