"""Exact answers the tests compare the pipeline's estimates with (shared by several test files)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def exact_lower_quantile(pairs: Sequence[tuple[float, float]], q: float) -> float:
    """The smallest value whose cumulative weight reaches q × total (the sketch's definition)."""
    ordered = sorted(pairs)
    total = math.fsum(w for _, w in ordered)
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= q * total:
            return value
    return ordered[-1][0]
