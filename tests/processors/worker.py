"""A worker process for tests: `zapstream work`'s code path with a recording handler.

python -m tests.processors.worker REDIS_URL TOPOLOGY_JSON GROUP OPTIONS_JSON
"""

from __future__ import annotations

import sys

import msgspec

from tests.processors.recording import Options, recording_handler
from zapstream.logs import configure_logging
from zapstream.run import run_command, work
from zapstream.settings import Settings
from zapstream.topology import parse_topology


def main(argv: list[str]) -> int:
    redis_url, topology_json, group, options_json, *rest = argv
    metrics_port = int(rest[0]) if rest else None
    configure_logging("info", json=True)
    topology = parse_topology(topology_json, source="test topology")
    options = msgspec.json.decode(options_json, type=Options)
    handlers = {group: recording_handler(options)}
    settings = Settings(redis_url=redis_url)
    return run_command(work(settings, topology, handlers, metrics_port=metrics_port))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
