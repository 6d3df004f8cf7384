"""Timing shared by the benchmarks: medians of repeated runs, measured in the same process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``function``."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
