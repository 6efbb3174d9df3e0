"""`work` as a process: probes and metrics on --metrics-port, a clean exit on SIGTERM."""

from __future__ import annotations

import signal

import httpx
from redis.asyncio import Redis

from tests.processors.recording import COMPLETIONS, Options, append, topology
from tests.processors.workers import Workers
from tests.servers import free_port
from tests.waiting import eventually


async def test_work_serves_probes_and_metrics_and_stops_on_sigterm(
    redis: Redis, workers: Workers
) -> None:
    topo = topology({"g": {"streams": ["work"]}})
    ids = await append(redis, topo, "work", 25)
    port = free_port()
    process = workers.start(topo, Options(), metrics_port=port)
    try:
        url = f"http://127.0.0.1:{port}"

        async def answers(path: str) -> httpx.Response | None:
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return await client.get(url + path)
            except httpx.TransportError:
                return None

        ready = await eventually(lambda: answers("/ready"), timeout=20, interval=0.05)
        assert ready.status_code == 200
        await eventually(lambda: _all_done(redis, len(ids)), timeout=20)
        metrics = await answers("/metrics")
        assert metrics is not None
        assert 'zapstream_handler_done_total{group="g"} 25.0' in metrics.text
        process.send_signal(signal.SIGTERM)
        assert workers.wait(process, timeout=20) == 0
    finally:
        workers.stop_all()
    assert '"event": "consumer_stopped"' in workers.log(process)


async def _all_done(redis: Redis, count: int) -> bool:
    return int(await redis.hlen(COMPLETIONS)) == count
