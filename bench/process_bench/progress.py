"""log_progress() and load_average(): bench/process's progress lines go to stderr, so that
stdout stays the report (ingest_bench.progress does the same for bench/ingest, labelled so)."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def log_progress(message: str) -> None:
    print(f"[bench process {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    """The 1-minute load average (NaN where /proc/loadavg cannot be read)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")
