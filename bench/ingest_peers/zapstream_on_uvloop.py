"""`zapstream serve` on uvloop: zapstream.cli.main unchanged, with uvloop's loop policy.

    python bench/ingest_peers/zapstream_on_uvloop.py serve --host 127.0.0.1 --port PORT

For `bench/ingest --event-loop uvloop`, which runs all three servers on uvloop. cli.main runs
the server with asyncio.run(), which takes its loop from the policy installed here.
"""

from __future__ import annotations

import sys

import uvloop

from zapstream.cli import main

if __name__ == "__main__":
    uvloop.install()
    sys.exit(main(sys.argv[1:]))
