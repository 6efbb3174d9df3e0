"""log_progress(): bench/replay's progress lines, on stderr so that stdout stays the report."""

from __future__ import annotations

import sys
import time


def log_progress(message: str) -> None:
    print(f"[bench replay {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
