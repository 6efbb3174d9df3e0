"""zapstream commands as real processes for the metrics tests, and their /metrics read back.

A Command is `python -m zapstream ...` with its own environment, logging to a file; scrape()
GETs a /metrics and parses it with prometheus_client's own parser into samples keyed by name
and labels, so a test compares figures, not text.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def short_config(directory: Path) -> Path:
    """The repository's streams.yaml with the debounce windows of the tests (200 ms, 1 s)."""
    config = directory / "streams.yaml"
    config.write_text(
        (ROOT / "streams.yaml")
        .read_text()
        .replace("quiet: 2s", "quiet: 200ms")
        .replace("max_wait: 10s", "max_wait: 1s")
    )
    return config


class Command:
    """One `zapstream` process; stop() sends SIGTERM and expects exit status 0."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = logs / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, metrics_url: str) -> None:
        """Start it and wait until its /ready answers 200."""
        with self.log.open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "zapstream",
                *self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        ready_url = metrics_url.removesuffix("/metrics") + "/ready"

        async def ready() -> bool:
            assert self.process is not None
            assert self.process.returncode is None, self.log.read_text()
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(ready_url)).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout=30, interval=0.1)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout=30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise
        assert code == 0, self.log.read_text()


async def scrape_text(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(url: str) -> Samples:
    return parse(await scrape_text(url))


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled child not created yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def exported_names(text: str) -> set[str]:
    """Every sample name the text declares, with the suffixes prometheus_client adds, also for
    families that have no sample yet (a labelled counter no one has counted)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
