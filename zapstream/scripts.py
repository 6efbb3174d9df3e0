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
        batch = Batch(redis)
        for keys, args in calls:
            batch.script(self, keys, args)
        return await batch.execute()


class Batch:
    """Commands and script calls sent in one round trip (a pipeline, not a transaction).

    `command` queues a plain command, `script` a script call; `execute` returns their
    answers in order, or raises the first error. A script that Redis did not know (NOSCRIPT:
    it did not run) runs again on its own after the batch, so after a restart it runs after
    the commands that followed it in the batch: a batch whose order matters must not mix
    scripts that depend on one another's effects across a possible NOSCRIPT.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.pipe = redis.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Script, Sequence[Any], Sequence[Any]]] = {}

    @property
    def command(self) -> Any:
        """The pipeline, to queue plain commands on (`batch.command.get(key)`)."""
        return self.pipe

    def script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        self._scripts[len(self.pipe)] = (script, keys, args)
        # As a raw command: redis-py's cluster pipeline refuses its evalsha() method, yet
        # routes EVALSHA by its first key like any other command.
        self.pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def execute(self) -> list[Any]:
        results: list[Any] = await self.pipe.execute(raise_on_error=False)
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError) and index in self._scripts:
                results[index] = await self._scripts[index][0].run(
                    self.redis, *self._scripts[index][1:]
                )
            elif isinstance(result, Exception):
                raise result
        return results
