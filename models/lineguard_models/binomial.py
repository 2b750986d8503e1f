"""Exact binomial bounds for the calibration's rates (pure scipy; no torch, no I/O).

Used by ``calibration`` (escape and false-reject bounds of a bundle's thresholds and how many more
images would prove a target) and, vectorised, by ``operating_curve``. One-sided Clopper-Pearson at
``confidence``: 0 events in 20 at 95 % -> ``1 - 0.05 ** (1 / 20) = 0.139``.
"""

from __future__ import annotations

from scipy import stats

_EXTRA_SEARCH_LIMIT = 1_000_000


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """Exact one-sided upper bound of a binomial proportion after ``k`` events in ``n`` trials."""
    if n <= 0:
        return 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k} n={n}")
    if k == n:
        return 1.0
    return float(stats.beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """Exact one-sided lower bound of a binomial proportion."""
    if n <= 0 or k == 0:
        return 0.0
    if not 0 < k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k} n={n}")
    return float(stats.beta.ppf(1.0 - confidence, k, n - k + 1))


def extra_needed(k: int, n: int, target: float, confidence: float) -> int | None:
    """Fewest further trials, all without an event, that bring the upper bound to ``<= target``.

    ``None`` when the target is 0 (no finite sample proves a zero rate) or unreachable in a
    million trials.
    """
    if target <= 0.0:
        return None
    if clopper_pearson_upper(k, n, confidence) <= target:
        return 0
    hi = 1
    while clopper_pearson_upper(k, n + hi, confidence) > target:
        hi *= 2
        if hi > _EXTRA_SEARCH_LIMIT:
            return None
    lo = hi // 2  # bound(lo) > target >= bound(hi): bisect (the bound falls monotonically in n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if clopper_pearson_upper(k, n + mid, confidence) <= target:
            hi = mid
        else:
            lo = mid
    return hi
