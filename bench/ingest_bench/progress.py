"""log_progress(): bench/ingest's progress lines, on stderr so stdout stays the report."""

from __future__ import annotations

import sys
import time


def log_progress(message: str) -> None:
    print(f"[bench ingest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
