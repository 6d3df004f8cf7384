"""Which units come first, and when a set of them is enough: the ranking and the threshold rule."""

from __future__ import annotations

import numpy as np

from textloc.engine import AttentionLayer
from textloc.localization.directions import SUFFICIENCY, Direction
from textloc.localization.results import Means, Share


def rank_layers(candidates: list[AttentionLayer], exact: dict[str, Means], attribution: dict[str, float] | None, way: Direction = SUFFICIENCY) -> list[AttentionLayer]:
    """Best first: the exact sweep's merit in the choosing direction, else the attribution score."""
    unswept = (-np.inf,) * 4

    def key(layer: AttentionLayer) -> tuple:
        means = exact.get(layer.name)
        merit = way.merit(means) if means else unswept
        return (*(-value for value in merit), -(attribution or {}).get(layer.name, 0.0), layer.index)

    return sorted(candidates, key=key)


def share_or_lowest(value: float | None) -> float:
    return -np.inf if value is None else value


def reaches(share: Share, threshold: float, rule: str) -> bool:
    """Whether a set's share of the directly prompted rate reaches
    ``threshold``: its interval's lower bound (``rule="lower-bound"``) or the share itself
    (``"point"``); never when there is no share (no directly prompted hit). Shares are ratios of
    counts over the same pairs, so the small tolerance keeps 8/10 >= 0.8 true in floating point."""
    value = share.low if rule == "lower-bound" else share.value
    return value is not None and value >= threshold - 1e-9
