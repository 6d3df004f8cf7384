"""Intervals and agreements over prompt pairs: how far a localization's rates and rankings can be trusted.

Every interval is a seeded percentile bootstrap over pairs (``scipy.stats.bootstrap``), two-sided
at :data:`CONFIDENCE`: pairs are the unit the method samples, so they are what is resampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats

from textloc.localization.results import Share

CONFIDENCE = 0.95
RESAMPLES = 2000
# Random half splits of the pairs behind a split-half agreement.
SPLITS = 300


def interval(values: Sequence[float], seed: int = 0) -> list[float]:
    """The bootstrap interval of the mean of per-pair ``values``: ``[low, high]``.

    Values that are all equal (every pair read the word, or none did) resample to themselves: the
    interval is that value, which says that these pairs never disagreed, not that more pairs could not.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return [float("nan"), float("nan")]
    if np.ptp(values) == 0:
        return [float(values[0])] * 2
    result = scipy.stats.bootstrap(
        (values,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(seed)
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def share_interval(success: Sequence[float], reference: Sequence[float], seed: int = 0) -> Share:
    """``sum(success) / sum(reference)`` with its paired bootstrap interval: ``[share, low, high]``.

    The pairs are resampled together, so a set that hits on the same pairs as the directly prompted
    target holds its share in every resample. A resample without a reference hit has no share and is
    dropped; ``None`` everywhere when no pair has one.
    """
    success, reference = np.asarray(success, dtype=float), np.asarray(reference, dtype=float)
    if reference.sum() == 0:
        return Share(None, None, None)
    share = float(success.sum() / reference.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(success), size=(RESAMPLES, len(success)))
    totals = reference[picks].sum(axis=1)
    shares = success[picks].sum(axis=1)[totals > 0] / totals[totals > 0]
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(shares, [tail, 100 - tail])
    return Share(share, float(low), float(high))


def excludes_zero(values: Sequence[float], seed: int = 0) -> bool:
    """Whether the bootstrap interval of the mean of ``values`` lies wholly on one side of 0."""
    low, high = interval(values, seed)
    return low > 0 or high < 0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    if np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(a, b).statistic)


def split_half(predictor: np.ndarray, reference: np.ndarray, seed: int = 0, across: bool = True) -> list[float]:
    """How well ``predictor`` measured on half the pairs ranks the layers as ``reference`` does on
    the other half (``across=False``: on the same half): ``[mean, low, high]`` of the Spearman
    over :data:`SPLITS` random halvings.

    Both are ``[pairs, layers]`` per-pair effects. With ``predictor`` the exact sweep itself this is
    the sweep's own reproducibility at half the pairs: the most any screen scored this way can reach.
    """
    pairs = predictor.shape[0]
    if pairs < 2:
        return [float("nan")] * 3
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(SPLITS):
        order = rng.permutation(pairs)
        first, second = order[: pairs // 2], order[pairs // 2 :]
        values.append(spearman(predictor[first].mean(axis=0), reference[second if across else first].mean(axis=0)))
    tail = (1 - CONFIDENCE) / 2 * 100
    # The mean, not the median: with two layers every halving scores +1 or -1, and the mean says how often each.
    return [float(np.mean(values)), *map(float, np.percentile(values, [tail, 100 - tail]))]


def top_k_recall(screen: Sequence[float], exact: Sequence[float], k: int) -> float:
    """The share of the exact effect's top ``k`` layers that the screen also puts in its top ``k``."""
    k = max(1, min(k, len(exact)))
    best_exact = set(np.argsort(-np.asarray(exact, float), kind="stable")[:k])
    best_screen = set(np.argsort(-np.asarray(screen, float), kind="stable")[:k])
    return len(best_exact & best_screen) / k
