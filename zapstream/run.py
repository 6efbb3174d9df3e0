"""The long-running commands: `serve` (the webhook), `work` (consumer groups) and `run`
(both in one process).

Signals, for both: the first SIGTERM/SIGINT stops gracefully (the webhook finishes its
requests; each runner reads nothing new and finishes in-flight work within its group's grace
period, leaving the rest pending for other consumers), then exit 0. A second signal exits at
once. The previous signal handlers are restored on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

import httpx
import structlog
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette

from ingest.app import create_app
from processors.graph import Graph
from processors.runtime import GroupRunner, Handler, HandlerContext, Tick
from projections.follower import Follower, Target
from projections.replay import live_target
from projections.trim import Trimmer
from zapstream.connections import open_redis
from zapstream.metrics import Metrics
from zapstream.probes import probe_routes
from zapstream.settings import Settings
from zapstream.topology import Topology

try:
    import uvloop
except ImportError:  # uvicorn[standard] brings it where it builds (not on Windows)
    uvloop = None  # type: ignore[assignment]

log = structlog.get_logger()
T = TypeVar("T")

HTTP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 30  # an idle HTTP connection is closed after this (uvicorn's default: 5 s)
RUN_BATCH = 500  # entries per stream key per batch for the followers of `zapstream run`
BASE_CONNECTIONS = 64


async def work(
    settings: Settings,
    topology: Topology,
    handlers: Mapping[str, Handler],
    *,
    ticks: Mapping[str, Tick] | None = None,
    responder: Any = None,
    metrics_port: int | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Run one runner per group until a signal; 0 after a clean stop."""
    metrics = metrics or Metrics()
    async with _handler_context(settings, topology, metrics, responder, len(handlers)) as ctx:
        runners = _runners(ctx, handlers, ticks)
        probes = _probe_server(ctx, metrics_port) if metrics_port else None

        def stop() -> None:
            for runner in runners:
                runner.stop()
            if probes:
                probes.should_exit = True

        with StopOnSignal(stop):
            async with asyncio.TaskGroup() as tasks:
                if probes:
                    tasks.create_task(probes.serve())
                for runner in runners:
                    tasks.create_task(runner.run())
    return 0


async def run_all(
    settings: Settings,
    topology: Topology,
    handlers: Mapping[str, Handler],
    *,
    host: str,
    port: int,
    ticks: Mapping[str, Tick] | None = None,
    responder: Any = None,
    projections: Sequence[str] = (),
) -> int:
    """`zapstream run`: the webhook, every group and the projections in one process, until
    a signal."""
    metrics = Metrics()
    server = _webhook_server(settings, topology, metrics, host, port)
    async with (
        _handler_context(settings, topology, metrics, responder, len(handlers)) as ctx,
        # Smaller batches than `project`: each batch's reading and row building are steps of
        # the event loop that also serves the webhook.
        _followers(ctx.redis, topology, settings, projections, RUN_BATCH) as followers,
    ):
        runners = _runners(ctx, handlers, ticks)
        trimmer = Trimmer(ctx.redis, topology, metrics)

        def stop() -> None:
            server.should_exit = True
            for runner in runners:
                runner.stop()
            for follower in followers:
                follower.stop()
            trimmer.stop()

        log.info("running", host=host, port=port, groups=list(handlers), projections=projections)
        with StopOnSignal(stop):
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(server.serve())
                for runner in runners:
                    tasks.create_task(runner.run())
                for follower in followers:
                    tasks.create_task(follower.run())
                if _trims(topology):
                    tasks.create_task(trimmer.run())
    return 0 if server.started else 1


async def project(
    settings: Settings,
    topology: Topology,
    names: Sequence[str],
    *,
    metrics_port: int | None = None,
) -> int:
    """`zapstream project`: follow the log into the named read models until a signal."""
    metrics = Metrics()
    async with (
        open_redis(settings.redis_url) as redis,
        _followers(redis, topology, settings, names) as followers,
    ):
        checks = [_answers(follower.target) for follower in followers]
        app = Starlette(routes=probe_routes(lambda request: redis, topology, checks))
        app.state.metrics = metrics
        probes = _embedded(app, "0.0.0.0", metrics_port) if metrics_port else None

        trimmer = Trimmer(redis, topology, metrics)

        def stop() -> None:
            for follower in followers:
                follower.stop()
            trimmer.stop()
            if probes:
                probes.should_exit = True

        log.info("projecting", projections=list(names))
        with StopOnSignal(stop):
            async with asyncio.TaskGroup() as tasks:
                if probes:
                    tasks.create_task(probes.serve())
                for follower in followers:
                    tasks.create_task(follower.run())
                if _trims(topology):
                    tasks.create_task(trimmer.run())
    return 0


def _trims(topology: Topology) -> bool:
    """Whether any stream has a retention (trimming waits for every projection anyway, so it
    is safe to run beside any subset of them, in any number of processes)."""
    return any(spec.retention is not None for spec in topology.streams.values())


def _answers(target: Target) -> Callable[[], Awaitable[str]]:
    """A readiness check: the target reads its checkpoint within a few seconds."""

    async def check() -> str:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await target.positions()
        except Exception as err:  # any failure is the answer: not ready, and why
            return f"{target.name}: {type(err).__name__}: {err}"
        return ""

    return check


@contextlib.asynccontextmanager
async def _followers(
    redis: Redis,
    topology: Topology,
    settings: Settings,
    names: Sequence[str],
    batch: int | None = None,
) -> AsyncIterator[list[Follower]]:
    """A started target and its follower per projection; closed on the way out."""
    targets = [live_target(name, settings, topology) for name in names]
    try:
        for target in targets:
            await target.start()
        yield [Follower(redis, topology, target, batch=batch) for target in targets]
    finally:
        for target in targets:
            await target.close()


@contextlib.asynccontextmanager
async def _handler_context(
    settings: Settings, topology: Topology, metrics: Metrics, responder: Any, groups: int
) -> AsyncIterator[HandlerContext]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with (
        open_redis(settings.redis_url, max_connections=_connections(topology, groups)) as redis,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, limits=limits) as http,
        Graph.open(settings) as graph,
    ):
        try:
            yield HandlerContext(
                redis=redis,
                settings=settings,
                topology=topology,
                metrics=metrics,
                http=http,
                graph=graph,
                responder=responder,
            )
        finally:
            close = getattr(responder, "aclose", None)
            if close is not None:
                await close()


def _runners(
    ctx: HandlerContext, handlers: Mapping[str, Handler], ticks: Mapping[str, Tick] | None
) -> list[GroupRunner]:
    """One runner per group and partition: each reads keys of one hash tag (Redis Cluster)."""
    ticks = ticks or {}
    return [
        GroupRunner(ctx, name, handler, tick=ticks.get(name), partitions=[partition])
        for name, handler in handlers.items()
        for partition in range(ctx.topology.partitions)
    ]


def _connections(topology: Topology, groups: int) -> int:
    """Redis connections for a process: each runner's blocking read holds one for its whole
    `block` time, beside what the handlers use."""
    return BASE_CONNECTIONS + 2 * groups * topology.partitions


def run_command(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on uvloop where it is installed (as uvicorn.run would)."""
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class StopOnSignal:
    """First SIGTERM/SIGINT: call `on_stop` in the event loop; second: exit now."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.on_stop = on_stop
        self.signals = 0
        self.previous: dict[int, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> StopOnSignal:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals > 1:
            log.warning("forced_exit", signal=name)
            os._exit(1)
        log.info("stopping", signal=name)
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.on_stop)  # wakes the loop from its select()


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _embedded(app: Any, host: str, port: int, **options: Any) -> EmbeddedServer:
    """An EmbeddedServer of `app`: no log config or access log of uvicorn's own (structlog
    logs), and idle connections kept KEEP_ALIVE_S, longer than clients keep theirs (httpx 5 s,
    aiohttp 15 s, Prometheus), so that the client closes an idle connection, never the server
    just as the client sends a request on it (which the client sees as a failed request)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        **options,
    )
    return EmbeddedServer(config)


def _webhook_server(
    settings: Settings, topology: Topology, metrics: Metrics, host: str, port: int
) -> uvicorn.Server:
    app = create_app(settings, topology, metrics)
    return _embedded(app, host, port, timeout_graceful_shutdown=10)


async def serve(settings: Settings, topology: Topology, host: str, port: int) -> int:
    """The webhook alone, until a signal."""
    server = _webhook_server(settings, topology, Metrics(), host, port)
    log.info("webhook_serving", host=host, port=port)
    with StopOnSignal(lambda: setattr(server, "should_exit", True)):
        await server.serve()
    log.info("webhook_stopped")
    return 0 if server.started else 1


def _probe_server(ctx: HandlerContext, port: int) -> uvicorn.Server:
    app = Starlette(routes=probe_routes(lambda request: ctx.redis, ctx.topology))
    app.state.metrics = ctx.metrics
    return _embedded(app, "0.0.0.0", port)
