"""Markdown for the generated pages: tables, and the one way every page writes a number.

The hand-written pages quote the same numbers; ``tests/test_docs_numbers.py`` formats them with
these functions too, so a page and its results file are compared digit for digit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

DASH = "—"  # what a table shows where a value is missing


def pct(value: float | None) -> str:
    """A rate as a whole percentage (``0.8437`` -> ``84%``), as the bench scripts print them."""
    return DASH if value is None else f"{100 * value:.0f}%"


def bracket(low: float, high: float) -> str:
    """An interval of rates in percent: ``[72, 94]``."""
    return f"[{100 * low:.0f}, {100 * high:.0f}]"


def rate(value: float | None, interval: Sequence[float] | None = None) -> str:
    """A rate with its interval where there is one: ``84% [72, 94]``."""
    if value is None:
        return DASH
    return pct(value) if not interval else f"{pct(value)} {bracket(*interval)}"


def num(value: float | None, digits: int) -> str:
    """A number with ``digits`` decimals."""
    return DASH if value is None else f"{value:.{digits}f}"


def count(value: float, n: int) -> int:
    """How many of ``n`` a rate over ``n`` items counts."""
    return round(value * n)


def exact_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate, as the bench scripts give it
    (``scipy.stats.binomtest(...).proportion_ci``), computed here without scipy: the build
    imports no numerical library."""
    alpha = (1 - level) / 2

    def at_least(k: int, p: float) -> float:  # P(X >= k) for X ~ Binomial(n, p); grows with p
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def solve(k: int, target: float) -> float:  # the p where at_least(k, p) = target, by bisection
        low, high = 0.0, 1.0
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if at_least(k, middle) < target else (low, middle)
        return (low + high) / 2

    lower = 0.0 if successes == 0 else solve(successes, alpha)
    upper = 1.0 if successes == n else solve(successes + 1, 1 - alpha)
    return lower, upper


def counted(value: float, n: int) -> str:
    """A rate over ``n`` prompts with its count and exact interval: ``83% (40/48) [70, 93]``."""
    k = count(value, n)
    low, high = exact_interval(k, n)
    return f"{pct(value)} ({k}/{n}) [{bound(low)}, {bound(high)}]"


def accuracy(value: float, n: int) -> str:
    """A rate over ``n`` items to one decimal, with its exact interval: ``79.7% [68, 89]``."""
    low, high = exact_interval(count(value, n), n)
    return f"{value:.1%} [{100 * low:.0f}, {100 * high:.0f}]"


def points_lost(drop: dict[str, Any] | None) -> str:
    """Points of a rate lost against a baseline on the same items, with its paired interval
    (``{"points", "ci95"}``, bench_guard_lora's ``benign_drop``): ``16.6 [12.3, 20.9]``; none: ``-``."""
    return "-" if drop is None else f"{drop['points']:.1f} [{drop['ci95'][0]:.1f}, {drop['ci95'][1]:.1f}]"


def bound(value: float) -> str:
    """An interval's bound in percent: whole, with one decimal where it is under 10 (``7.4``)."""
    percent = 100 * value
    return f"{percent:.1f}" if 0 < percent < 10 else f"{percent:.0f}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; cells are written as given (``str()``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str) -> str:
    """``text`` as inline code."""
    return f"`{text}`"


def escape(text: str) -> str:
    """Plain text (an option's help) safe in Markdown and in a table cell; spans in backticks
    stay code."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else re.sub(r"([\\*_|<>\[\]])", r"\\\1", part) for part in parts)


def source_note(*paths: str) -> str:
    """The line under a generated page's title that says which files it shows."""
    files = ", ".join(code(path) for path in paths)
    return f"*Generated when the site is built, from {files}; edit those, not this page.*"
