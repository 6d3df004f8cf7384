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


def paired_ratio(baseline: Callable[[], object], candidate: Callable[[], object], pairs: int) -> tuple[float, float]:
    """Median seconds of ``baseline`` and median ``candidate / baseline`` ratio over ``pairs``
    back-to-back pairs, alternating which runs first.

    On shared cores the speed drifts over minutes; the two calls of a pair see the same load, so
    their ratio is steadier than a ratio of two medians taken minutes apart.
    """
    seconds, ratios = [], []
    for index in range(pairs):
        order = (baseline, candidate) if index % 2 == 0 else (candidate, baseline)
        times = {}
        for function in order:
            began = time.perf_counter()
            function()
            times[function] = time.perf_counter() - began
        seconds.append(times[baseline])
        ratios.append(times[candidate] / times[baseline])
    return statistics.median(seconds), statistics.median(ratios)
