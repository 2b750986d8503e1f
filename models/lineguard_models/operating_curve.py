"""The operating curve of a calibration, for the report (pure numpy / scipy).

Called by :func:`calibration.calibrate`; drawn by ``report.plot_operating_curve`` and ``report_html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

Scores = npt.NDArray[np.float64]


def _upper_bounds(k: npt.NDArray[np.int64], n: int, confidence: float) -> Scores:
    """Vectorised ``binomial.clopper_pearson_upper`` for event counts ``k`` out of ``n``."""
    out = np.ones(k.shape, np.float64)
    below = k < n
    out[below] = stats.beta.ppf(confidence, k[below] + 1, n - k[below])
    return out


def operating_curve(good: Scores, classes: Mapping[str, Scores], lower: float, upper: float,
                    confidence: float, points: int = 160) -> dict[str, Any]:
    """The trade-off around the chosen thresholds, for the report (JSON-safe lists).

    ``escape``: the accept threshold swept (reject threshold kept, raised to it when passed): the
    automated share against the worst class's observed escape rate and its upper bound.
    ``false_reject``: the reject threshold swept (accept threshold kept, lowered to it when passed):
    the share against the false-reject rate and its bound. ``chosen``: the calibrated point.
    """
    every = np.concatenate([good, *classes.values()])
    cands = np.unique(every)
    if cands.size > points:  # evenly spaced in rank: the curve's shape, not every score
        cands = cands[np.unique(np.linspace(0, cands.size - 1, points).round().astype(int))]
    cands = np.unique(np.concatenate([cands, [lower, upper]]))
    srt = np.sort(every)

    def share(lo: Scores, hi: Scores) -> Scores:
        inside = np.searchsorted(srt, hi, "left") - np.searchsorted(srt, lo, "left")
        return np.asarray(1.0 - inside / srt.size, np.float64)

    g_sorted = np.sort(good)
    out: dict[str, Any] = {"chosen": {"lower": lower, "upper": upper}}
    fr = g_sorted.size - np.searchsorted(g_sorted, cands, "left")
    out["false_reject"] = {"threshold": cands.tolist(), "share": share(np.minimum(lower, cands), cands).tolist(),
                           "rate": (fr / g_sorted.size).tolist(),
                           "bound": _upper_bounds(fr, g_sorted.size, confidence).tolist()}
    if classes:
        rates, bounds = [], []
        for d in classes.values():
            esc = np.searchsorted(np.sort(d), cands, "left")
            rates.append(esc / d.size)
            bounds.append(_upper_bounds(esc, d.size, confidence))
        out["escape"] = {"threshold": cands.tolist(), "share": share(cands, np.maximum(upper, cands)).tolist(),
                         "rate": np.max(rates, axis=0).tolist(), "bound": np.max(bounds, axis=0).tolist()}
    return out
