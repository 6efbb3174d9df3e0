"""serve(): run a peer app the way `zapstream serve` runs the webhook, so the servers match.

zapstream/cli.py builds `uvicorn.Config(app, ..., log_config=None, access_log=False)` and awaits
`uvicorn.Server(config).serve()` inside `asyncio.run()`. uvicorn picks httptools on its own,
but the event loop is asyncio's (uvicorn installs uvloop only in `uvicorn.run()`/`Server.run()`).
The peers do the same, unless `--event-loop uvloop` puts all three servers on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn

EVENT_LOOPS = ("zapstream", "uvloop")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="zapstream",
                        help="zapstream: the loop `zapstream serve` runs on; uvloop: uvloop")


def serve(app: Any, *, host: str, port: int, event_loop: str) -> None:
    """Serve `app` on one uvicorn process with zapstream serve's uvicorn options."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    loop_factory = None
    if event_loop == "uvloop":
        # Imported only here: bench/ingest tells the loops apart by uvloop being loaded.
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(server.serve())
