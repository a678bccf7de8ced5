"""Timing helpers shared by every benchmark module."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

# (what was measured, median, unit)
Row = tuple[str, float, str]


def median_seconds(action: Callable[[], object], rounds: int, inner: int = 1) -> float:
    """Median over ``rounds`` of the mean time of ``inner`` back-to-back calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            action()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)
