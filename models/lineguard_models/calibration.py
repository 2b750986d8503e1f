"""Threshold calibration with confidence bounds (pure numpy / scipy; no torch, no I/O).

Data flow: ONNX Runtime scores of held-out good images and of defect images per class ->
:func:`calibrate` -> :class:`CalibrationResult` (accept/reject thresholds with an uncertainty
band, exact Clopper-Pearson bounds, AUROC per class, warnings) -> bundle manifest
(``thresholds`` and ``calibration``) and the report (``report.py``).

Policy (``docs/calibration.md``): accept when ``score < lower``, reject when ``score >= upper``,
recheck in between. Two constraints are evaluated on the calibration data:

* false-reject budget -> ``t_fr``: the smallest threshold at or above which at most
  ``floor(budget * n_good)`` good images lie; a reject threshold ``>= t_fr`` meets the budget;
* escape target -> ``t_esc``: the largest threshold below which at most
  ``floor(target * n_class)`` images of *every* defect class lie; an accept threshold
  ``<= t_esc`` meets the target.

``lower = min(t_esc, t_fr)`` and ``upper = max(t_esc, t_fr)``. When classes overlap the band holds
the scores where both good and defect parts were seen; when they separate it is the gap between
the highest accepted good and the lowest defect score, which no calibration part reached. Both
constraints always hold on the calibration data; the Clopper-Pearson upper bounds say how far
that can be trusted for the next parts. Bounds are one-sided at ``confidence`` (0/20 at 95 % ->
``1 - 0.05 ** (1 / 20) = 0.139``).

Must never: return a non-finite threshold, hide a class with too few images, or fall back to a
good-only threshold without flagging it (``mode = "good_only"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from lineguard.errors import CalibrationError

log = logging.getLogger(__name__)

Scores = npt.NDArray[np.float64]
MIN_IMAGES_PER_CLASS = 15  # below this the bounds are too wide to mean much: warn loudly
_EXTRA_SEARCH_LIMIT = 1_000_000


class CalibrationPolicy(BaseModel):
    """How thresholds are chosen. Stored in the manifest (``thresholds.policy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    escape_target: float = Field(
        0.02, ge=0.0, lt=0.5, description="max fraction of each defect class accepted (score < lower)"
    )
    false_reject_budget: float = Field(
        0.01, ge=0.0, lt=0.5, description="max fraction of good parts rejected (score >= upper)"
    )
    confidence: float = Field(0.95, ge=0.5, le=0.9999, description="one-sided confidence of the bounds")
    band: Literal["recheck", "none"] = Field(
        "recheck", description="'recheck': uncertainty band between the thresholds; 'none': one threshold"
    )
    min_good: int = Field(5, ge=2, le=100_000, description="fewest held-out good scores to calibrate at all")
    min_per_class: int = Field(
        MIN_IMAGES_PER_CLASS, ge=1, le=100_000, description="fewer defect images per class than this: warning"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GoodStats:
    """What the thresholds do to the held-out good images."""

    n: int
    false_rejects: int  # score >= upper
    rechecks: int  # lower <= score < upper
    false_reject_rate: float
    false_reject_upper: float  # one-sided Clopper-Pearson upper bound
    extra_needed: int | None  # more good images (no further false rejects) to bound under the budget
    score_median: float
    score_max: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassStats:
    """What the thresholds do to one defect class."""

    name: str
    n: int
    escapes: int  # score < lower: accepted although defective
    rechecks: int
    rejects: int
    escape_rate: float
    escape_upper: float  # one-sided Clopper-Pearson upper bound
    extra_needed: int | None  # more images of this class (no further escapes) to bound under the target
    auroc: float  # good vs this class; 1 = perfectly separated
    score_min: float
    score_median: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationResult:
    """Thresholds and the evidence behind them."""

    lower: float
    upper: float
    mode: Literal["defects", "good_only"]
    policy: CalibrationPolicy
    good: GoodStats
    classes: tuple[ClassStats, ...]
    warnings: tuple[str, ...]
    t_false_reject: float
    t_escape: float | None

    def thresholds(self) -> dict[str, Any]:
        """The manifest's ``thresholds`` section."""
        return {"lower": self.lower, "upper": self.upper, "policy": {**self.policy.model_dump(), "mode": self.mode}}

    def summary(self) -> dict[str, Any]:
        """The manifest's ``calibration`` section (JSON-safe)."""
        return {
            "mode": self.mode,
            "confidence": self.policy.confidence,
            "t_false_reject": self.t_false_reject,
            "t_escape": self.t_escape,
            "good": asdict(self.good),
            "classes": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.classes},
            "warnings": list(self.warnings),
        }


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


def auroc(good: npt.ArrayLike, defect: npt.ArrayLike) -> float:
    """P(defect score > good score) + 0.5 P(tie): the Mann-Whitney AUROC (higher = more anomalous)."""
    g, d = np.asarray(good, np.float64), np.asarray(defect, np.float64)
    if g.size == 0 or d.size == 0:
        raise ValueError("AUROC needs at least one good and one defect score")
    ranks = stats.rankdata(np.concatenate([g, d]))  # average ranks handle ties
    u = ranks[g.size :].sum() - d.size * (d.size + 1) / 2.0
    return float(u / (g.size * d.size))


def roc_curve(good: npt.ArrayLike, defect: npt.ArrayLike) -> tuple[Scores, Scores]:
    """(false-positive rate, true-positive rate) for the rule 'score >= t', t over all scores."""
    g, d = np.asarray(good, np.float64), np.asarray(defect, np.float64)
    ts = np.unique(np.concatenate([g, d]))[::-1]
    fpr = np.array([0.0, *[(g >= t).mean() for t in ts]])
    tpr = np.array([0.0, *[(d >= t).mean() for t in ts]])
    return fpr, tpr


def _check(name: str, scores: Scores) -> None:
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise CalibrationError(f"{bad} of {scores.size} {name} scores are NaN or infinite: the model output is broken")


def false_reject_threshold(good: Scores, budget: float) -> float:
    """Smallest t with at most floor(budget * n) good scores >= t."""
    g = np.sort(good)
    allowed = min(math.floor(budget * g.size + 1e-9), g.size - 1)
    return float(np.nextafter(g[g.size - allowed - 1], np.inf))


def escape_threshold(defect: Scores, target: float) -> float:
    """Largest t with at most floor(target * n) defect scores < t."""
    d = np.sort(defect)
    allowed = min(math.floor(target * d.size + 1e-9), d.size - 1)
    return float(d[allowed])


def _good_stats(good: Scores, lower: float, upper: float, policy: CalibrationPolicy) -> GoodStats:
    fr = int(np.count_nonzero(good >= upper))
    return GoodStats(
        n=int(good.size),
        false_rejects=fr,
        rechecks=int(np.count_nonzero((good >= lower) & (good < upper))),
        false_reject_rate=fr / good.size,
        false_reject_upper=clopper_pearson_upper(fr, good.size, policy.confidence),
        extra_needed=extra_needed(fr, good.size, policy.false_reject_budget, policy.confidence),
        score_median=float(np.median(good)),
        score_max=float(good.max()),
    )


def _class_stats(name: str, good: Scores, d: Scores, lower: float, upper: float, p: CalibrationPolicy) -> ClassStats:
    esc = int(np.count_nonzero(d < lower))
    rej = int(np.count_nonzero(d >= upper))
    return ClassStats(
        name=name,
        n=int(d.size),
        escapes=esc,
        rechecks=int(d.size) - esc - rej,
        rejects=rej,
        escape_rate=esc / d.size,
        escape_upper=clopper_pearson_upper(esc, d.size, p.confidence),
        extra_needed=extra_needed(esc, d.size, p.escape_target, p.confidence),
        auroc=auroc(good, d),
        score_min=float(d.min()),
        score_median=float(np.median(d)),
    )


def _thresholds(t_fr: float, t_esc: float | None, policy: CalibrationPolicy) -> tuple[float, float]:
    if t_esc is None:
        return t_fr, t_fr
    if policy.band == "recheck":
        return min(t_esc, t_fr), max(t_esc, t_fr)
    # one threshold: midway through a gap; on overlap, protecting against escapes wins
    t = 0.5 * (t_fr + t_esc) if t_esc >= t_fr else t_esc
    return t, t


def calibrate(
    good_scores: npt.ArrayLike,
    defect_scores: Mapping[str, npt.ArrayLike],
    policy: CalibrationPolicy | None = None,
) -> CalibrationResult:
    """Choose thresholds from held-out good scores and defect scores per class.

    Raises :class:`CalibrationError` for non-finite scores or too few good scores.
    """
    policy = policy or CalibrationPolicy()
    good = np.asarray(good_scores, np.float64).ravel()
    _check("good", good)
    if good.size < policy.min_good:
        raise CalibrationError(
            f"only {good.size} held-out good scores; at least {policy.min_good} are needed to set a "
            "false-reject threshold: add good images or hold out more"
        )
    warnings: list[str] = []
    classes: dict[str, Scores] = {}
    for name, raw in sorted(defect_scores.items()):
        d = np.asarray(raw, np.float64).ravel()
        _check(f"defect class {name!r}", d)
        if d.size == 0:
            warnings.append(f"defect class {name!r} has no images: it is not calibrated")
        elif d.size < policy.min_per_class:
            warnings.append(
                f"defect class {name!r} has only {d.size} images (< {policy.min_per_class}): its escape "
                "bound is wide; add images of this class"
            )
        if d.size:
            classes[name] = d
    t_fr = false_reject_threshold(good, policy.false_reject_budget)
    t_esc = min((escape_threshold(d, policy.escape_target) for d in classes.values()), default=None)
    if t_esc is None:
        warnings.append(
            "NO DEFECT IMAGES: threshold is the good-score quantile for the false-reject budget; "
            "the escape rate is unknown. Calibrate with defect images before production (lineguard calibrate)"
        )
    lower, upper = _thresholds(t_fr, t_esc, policy)
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise CalibrationError(f"calibration produced non-finite thresholds ({lower}, {upper})")
    per_class = tuple(_class_stats(n, good, d, lower, upper, policy) for n, d in classes.items())
    for c in per_class:
        if c.auroc < 0.6:
            warnings.append(f"defect class {c.name!r} is barely separable from good parts (AUROC {c.auroc:.2f})")
    good_stats = _good_stats(good, lower, upper, policy)
    if good_stats.rechecks > 0.2 * good.size:
        warnings.append(f"the uncertainty band sends {good_stats.rechecks}/{good.size} good parts to recheck")
    for w in warnings:
        log.warning("calibration: %s", w)
    return CalibrationResult(
        lower=lower, upper=upper, mode="defects" if per_class else "good_only", policy=policy,
        good=good_stats, classes=per_class, warnings=tuple(warnings), t_false_reject=t_fr, t_escape=t_esc,
    )
