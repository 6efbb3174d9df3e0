"""The `zapstream` command: argparse tree, Settings and Topology built once, one call each.

Exit status: 0 on success, 2 on bad usage (argparse), 1 on failure with a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog
import uvicorn

from ingest.app import create_app
from zapstream.logs import configure_logging
from zapstream.metrics import Metrics
from zapstream.settings import ConfigError, Settings, load_settings
from zapstream.topology import Topology, load_topology

log = structlog.get_logger()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zapstream",
        description="Event-sourced WhatsApp chatbot pipeline on Redis Streams.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="the webhook HTTP server alone")
    _add_http_options(serve)

    run = commands.add_parser("run", help="everything in one process (for now: the webhook)")
    _add_http_options(run)
    return parser


def _add_http_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        topology = load_topology(settings.config_path)
        if args.command in ("serve", "run"):
            settings.require("app_secrets", "verify_token")
            return asyncio.run(serve(settings, topology, args.host, args.port))
    except ConfigError as err:
        print(f"zapstream: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


async def serve(settings: Settings, topology: Topology, host: str, port: int) -> int:
    app = create_app(settings, topology, Metrics())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    log.info("webhook_serving", host=host, port=port)
    # uvicorn handles SIGTERM/SIGINT while serving (graceful, then forced), restores the
    # previous handlers and re-raises the signal it caught: a stop we asked for is success.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        await server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("webhook_stopped")
    return 0 if server.started else 1


def _ignore(signum: int, frame: object) -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
