"""The bench's streams.yaml: the repository's, with a debounce window of zero and send limits
that never bind, written into a temporary directory for `zapstream serve` and `work`
(ZAPSTREAM_CONFIG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from zapstream.topology import load_topology

# Each conversation is one message: a window of zero makes it a turn at once.
DEBOUNCE = {"quiet": "0s", "max_wait": "0s"}
# Per business number: far above what a step sends to one number (rate / numbers).
PER_NUMBER = {"rate": 1000, "per": "1s", "burst": 1000}
# Per customer: each conversation sends one reply, so this never binds either.
PER_CUSTOMER = {"rate": 1000, "per": "1s", "burst": 1000}


def write_bench_topology(config: Path, directory: Path) -> Path:
    """streams.yaml as `config` but for the debounce window and the rate limits, checked by
    zapstream's own loader; its path."""
    document: dict[str, Any] = msgspec.yaml.decode(config.read_bytes())
    document["debounce"] = {**document.get("debounce", {}), **DEBOUNCE}
    document["rate_limits"] = {"per_number": PER_NUMBER, "per_customer": PER_CUSTOMER}
    path = directory / "streams.yaml"
    path.write_bytes(msgspec.yaml.encode(document))
    load_topology(path)  # a ConfigError here names the key
    return path
