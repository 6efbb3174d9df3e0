"""percentile(): the nearest-rank percentile every figure of bench/e2e is reported with."""

from __future__ import annotations

import math


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted `values` (NaN when empty)."""
    if not values:
        return math.nan
    return values[max(0, math.ceil(share * len(values)) - 1)]
