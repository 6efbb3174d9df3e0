"""The `zapstream` command: argparse tree, Settings and Topology built once, one call each.

Exit status: 0 on success, 2 on bad usage (argparse), 1 on failure with a one-line reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from processors.groups import TICKS, pick_responder, select_handlers
from projections.replay import FOLLOWED, PROJECTIONS
from zapstream import chat, dlq, inspect, operate, run
from zapstream.logs import configure_logging
from zapstream.partitions import check_partitions
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

    everything = commands.add_parser(
        "run", help="the webhook and every consumer group in one process"
    )
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

    project = commands.add_parser("project", help="projection followers (the read models)")
    project.add_argument(
        "--projection",
        action="append",
        default=[],
        choices=FOLLOWED,
        metavar="NAME",
        help=f"follow only this one (repeatable: {', '.join(FOLLOWED)}; default: all)",
    )
    project.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve /health, /ready and /metrics on this port",
    )

    replay = commands.add_parser("replay", help="rebuild read models from the log")
    replay.add_argument(
        "--projection", required=True, choices=(*PROJECTIONS, "all"), help="which to rebuild"
    )
    replay.add_argument(
        "--since",
        default=None,
        metavar="ISO8601",
        help="rebuild only the sessions the events since this time touch, from the whole "
        "history (equals a full replay); a time without a zone is UTC",
    )
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    report = commands.add_parser("report", help="key analytics, from the DuckDB snapshot")
    report.add_argument("--json", action="store_true", help="one JSON document")

    handoff = commands.add_parser("handoff", help="sessions held by a human")
    handoff_commands = handoff.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = handoff_commands.add_parser("list", help="the sessions a human holds")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    give_back = handoff_commands.add_parser("release", help="hand a session back to the AI")
    give_back.add_argument("session_id", metavar="SESSION_ID")

    looking = commands.add_parser(
        "inspect",
        help="streams, groups, consumers, lag, pending, dead letters, trimming, the archive",
    )
    looking.add_argument("--json", action="store_true", help="one JSON document")
    looking.add_argument(
        "--watch", action="store_true", help="redraw every 2 seconds (--json: a line each time)"
    )

    _add_dlq(commands)

    chat = commands.add_parser(
        "chat", help="talk to a running pipeline as a WhatsApp customer, from the terminal"
    )
    chat.add_argument(
        "--as", dest="phone", default="15550001234", metavar="PHONE", help="your number"
    )
    chat.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        metavar="URL",
        help="the running server (default http://127.0.0.1:8000)",
    )
    return parser


def _add_dlq(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dead = commands.add_parser("dlq", help="dead letters: list, requeue, drop")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the dead letters, oldest first")
    listing.add_argument("--group", metavar="G", help="only this group's")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    again = actions.add_parser(
        "requeue", help="send dead letters back to the group that failed them, once"
    )
    again.add_argument("ids", nargs="*", type=dlq.parse_ref, metavar="ID", help="or GROUP/ID")
    again.add_argument("--all", action="store_true", help="every dead letter (of --group)")
    again.add_argument("--group", metavar="G", help="only this group's dead letters")
    gone = actions.add_parser("drop", help="delete dead letters for good")
    gone.add_argument("ids", nargs="+", type=dlq.parse_ref, metavar="ID", help="or GROUP/ID")
    gone.add_argument("--group", metavar="G", help="only this group's dead letters")


def _add_http_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        topology = load_topology(settings.config_path)
        if args.command == "serve":
            settings.require("app_secrets", "verify_token")
            _check_partitions(settings, topology)
            return run.run_command(run.serve(settings, topology, args.host, args.port))
        if args.command == "run":
            settings.require("app_secrets", "verify_token", "access_token")
            handlers = select_handlers(topology, [])
            _check_partitions(settings, topology)
            return run.run_command(
                run.run_all(
                    settings,
                    topology,
                    handlers,
                    host=args.host,
                    port=args.port,
                    ticks=TICKS,
                    responder=pick_responder(settings) if "respond" in handlers else None,
                    projections=FOLLOWED,
                )
            )
        if args.command == "project":
            names = args.projection or list(FOLLOWED)
            _check_partitions(settings, topology)
            return run.run_command(
                run.project(settings, topology, names, metrics_port=args.metrics_port)
            )
        if args.command == "replay":
            refused = operate.confirm_replay(args)
            if refused is not None:
                return refused
            _check_partitions(settings, topology)
            return run.run_command(operate.replay(settings, topology, args))
        if args.command == "report":
            return operate.report(settings, args)
        if args.command == "handoff":
            return run.run_command(operate.handoff(settings, topology, args))
        if args.command == "inspect":
            return run.run_command(inspect.inspect(settings, topology, args))
        if args.command == "dlq":
            return run.run_command(dlq.dlq(settings, topology, args))
        if args.command == "chat":
            settings.require("app_secrets")
            return run.run_command(chat.chat(settings, args.phone, args.url))
        if args.command == "work":
            handlers = select_handlers(topology, args.group)
            if "send" in handlers:
                settings.require("access_token")
            _check_partitions(settings, topology)
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


def _check_partitions(settings: Settings, topology: Topology) -> None:
    """The commands that write or follow the log refuse a partition count it was not written
    with (partitions.py)."""
    run.run_command(check_partitions(settings, topology))


if __name__ == "__main__":
    sys.exit(main())
