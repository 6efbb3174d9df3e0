"""serve(): run a peer app the way `zapstream serve` runs the webhook, so the servers match.

zapstream/run.py builds `uvicorn.Config(app, ..., log_config=None, access_log=False,
timeout_keep_alive=KEEP_ALIVE_S)` and awaits
`Server(config).serve()` inside `run_command()`, which runs it on uvloop where installed. The
peers run the same way.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from zapstream.run import KEEP_ALIVE_S, run_command


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)


def serve(app: Any, *, host: str, port: int) -> None:
    """Serve `app` on one uvicorn process with zapstream serve's uvicorn options."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10,
                            timeout_keep_alive=KEEP_ALIVE_S)
    server = uvicorn.Server(config)

    async def serve_until_stopped() -> int:
        await server.serve()
        return 0

    run_command(serve_until_stopped())
