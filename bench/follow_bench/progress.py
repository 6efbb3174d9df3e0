"""log_progress(): bench/follow's progress lines, on stderr so that stdout stays the report."""

from __future__ import annotations

import sys
import time


def log_progress(message: str) -> None:
    print(f"[bench follow {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
