"""The `zapstream` command: argparse tree, Settings and Topology built once, one call each.

Exit status: 0 on success, 2 on bad usage (argparse), 1 on failure with a one-line reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from processors.groups import TICKS, pick_responder, select_handlers
from zapstream import run
from zapstream.logs import configure_logging
from zapstream.settings import ConfigError, load_settings
from zapstream.topology import load_topology

log = structlog.get_logger()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zapstream",
        description="Event-sourced WhatsApp chatbot pipeline on Redis Streams.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="the webhook HTTP server alone")
    _add_http_options(serve)

    everything = commands.add_parser("run", help="everything in one process (for now: the webhook)")
    _add_http_options(everything)

    work = commands.add_parser("work", help="consumer-group workers")
    work.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this group (repeatable; default: every group)",
    )
    work.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve /health, /ready and /metrics on this port",
    )
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
            return run.run_command(run.serve(settings, topology, args.host, args.port))
        if args.command == "work":
            handlers = select_handlers(topology, args.group)
            return run.run_command(
                run.work(
                    settings,
                    topology,
                    handlers,
                    ticks=TICKS,
                    responder=pick_responder(settings) if "respond" in handlers else None,
                    metrics_port=args.metrics_port,
                )
            )
    except ConfigError as err:
        print(f"zapstream: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
