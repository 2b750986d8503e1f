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
the highest accepted good and the lowest defect score, which no calibration part reached; with the
``automate`` band (and ``none``) one threshold splits that gap where the modelled tails of both sides
put the least risk to the targets (:func:`gap_threshold`). The escape constraint always holds on the
calibration data, and so does the false-reject one except where too few goods can bound the budget
(``reject_tail: model``, :func:`tail_reject_threshold`: at most one calibration good more); the
Clopper-Pearson upper bounds say how far that can be trusted for the next parts. Bounds are one-sided
at ``confidence`` (0/20 at 95 % -> ``1 - 0.05 ** (1 / 20) = 0.139``).

Must never: return a non-finite threshold, hide a class with too few images, or fall back to a
good-only threshold without flagging it (``mode = "good_only"``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from lineguard.errors import CalibrationError
from lineguard_models.binomial import clopper_pearson_upper, extra_needed
from lineguard_models.operating_curve import operating_curve

log = logging.getLogger(__name__)

Scores = npt.NDArray[np.float64]
MIN_IMAGES_PER_CLASS = 15  # below this the bounds are too wide to mean much: warn loudly


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
    band: Literal["automate", "recheck", "none"] = Field(
        "automate", description="'automate': the thresholds that decide the most calibration parts within the "
        "targets (a band only where good and defect scores overlap); 'recheck': the whole gap between the "
        "classes is a band; 'none': one threshold"
    )
    targets_on: Literal["bound", "observed"] = Field(
        "bound", description="'bound': the targets limit the Clopper-Pearson upper bounds where the data can "
        "support that (else the observed rates, flagged); 'observed': the observed rates only"
    )
    escape_tail: Literal["model", "observed"] = Field(
        "model", description="'model': an accept threshold never above where each class's modelled lower tail "
        "(exponential, from its lowest scores) puts escape_target of new defects, so a few calibration defects "
        "do not set it at their lowest score; 'observed': the calibration scores only (before 2026-12-06)"
    )
    reject_tail: Literal["model", "observed"] = Field(
        "model", description="'model': with too few good images to bound the false-reject budget, the reject "
        "threshold may sit below the highest good score, where the goods' modelled upper tail (exponential, from "
        "their highest scores) puts false_reject_budget of new good parts, never letting more than one more "
        "calibration good through than the observed rule; 'observed': the calibration scores only (before "
        "stop 11, 2026-12-06)"
    )
    gap: Literal["balanced", "escape_first"] = Field(
        "balanced", description="where one threshold goes in a gap between the classes: 'balanced' where false "
        "rejects / budget + escapes / target of the modelled tails is least; 'escape_first' the lowest threshold "
        "whose modelled false-reject rate is within the budget (escapes cost more than a rejected good part)"
    )
    accept_ceiling: float | None = Field(
        None, description="set by training, not by hand: the accept threshold is never above this score. A bundle "
        "with a verdict head (which only raises scores) gets the plain engine's own accept threshold here, so it "
        "never accepts a part the plain engine would not have accepted (docs/anomaly-model.md)")
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
    allowed: int = 0  # false rejects the policy allowed on these images
    supported: bool = False  # can zero false rejects among n bring the bound under the budget?


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
    allowed: int = 0  # escapes the policy allowed on this class
    supported: bool = False  # can zero escapes among n bring the bound under the target?


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
    automated_share: float = 0.0  # (accepted + rejected) / all calibration images
    curve: dict[str, Any] | None = None  # operating_curve(): for the report, not the manifest

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
            "automated_share": self.automated_share,
            "good": asdict(self.good),
            "classes": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.classes},
            "warnings": list(self.warnings),
        }


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


def false_reject_threshold(good: Scores, budget: float, allowed: int | None = None) -> float:
    """Smallest t with at most ``allowed`` (default floor(budget * n)) good scores >= t."""
    g = np.sort(good)
    k = math.floor(budget * g.size + 1e-9) if allowed is None else allowed
    k = min(k, g.size - 1)
    return float(np.nextafter(g[g.size - k - 1], np.inf))


def escape_threshold(defect: Scores, target: float, allowed: int | None = None) -> float:
    """Largest t with at most ``allowed`` (default floor(target * n)) defect scores < t."""
    d = np.sort(defect)
    k = math.floor(target * d.size + 1e-9) if allowed is None else allowed
    return float(d[min(k, d.size - 1)])


def tail_escape_threshold(defect: Scores, target: float) -> float:
    """Where the class's modelled lower tail puts ``target`` of new defects below.

    The lower tail as in :func:`gap_threshold` (:func:`_tail`): a new defect scores below ``t < u``
    with about ``p0 exp(-(u - t) / s)``. Returns the ``t`` where that is
    ``target`` (``u`` when the tail's start is already that rare: the calibration scores then set
    the threshold alone). Why: with 10-20
    defects per class the lowest calibration score sits near the class's 5-10 % point, not its 2 %
    point; on the quality suite an accept threshold at it let 14-16 % of the test defects of casting,
    elpv_poly and bsdata through (above the 13.9 % bound the report had predicted); the tail model
    halved the suite's mean escape rate (docs/calibration.md)."""
    d = np.sort(defect)
    return float(d[0]) if d.size < 3 or target <= 0.0 else _tail_point(d, target, -1.0)


def tail_reject_threshold(good: Scores, budget: float, allowed: int) -> float:
    """The reject threshold the goods' modelled upper tail gives when their count cannot bound ``budget``.

    Where the same exponential tail as :func:`gap_threshold` (:func:`_tail`, the k highest goods' mean
    excess over the next) puts ``budget`` of new good parts above, lowered from the observed rule's
    threshold (:func:`false_reject_threshold` with ``allowed``) but never below the score that would let
    one more calibration good through. Why: with 50-60 goods and a 1 % budget the observed rule allows no
    calibration false reject, so the single highest good sets the threshold; on the quality suite that
    score was often an outlier far above the rest (metal plate 53.8 with the second highest at 47.0,
    elpv_mono 87.1 against 71.5), and every defect between went to recheck although 0-3 of 100 test goods
    ever scored above the highest calibration good (docs/calibration.md)."""
    t = false_reject_threshold(good, budget, allowed)
    g = np.sort(good)[::-1]
    if g.size < 3 or budget <= 0.0:
        return t
    one_more = float(np.nextafter(g[min(allowed + 1, g.size - 1)], np.inf))
    return max(min(t, _tail_point(g, budget, 1.0)), one_more)


def allowed_errors(n: int, target: float, confidence: float, targets_on: str = "bound") -> tuple[int, bool]:
    """(errors allowed among ``n`` calibration images, whether the data support the target).

    ``targets_on="bound"``: the most errors whose Clopper-Pearson upper bound is still ``<= target``.
    When even zero errors cannot get the bound under the target (too few images: 0/20 -> 13.9 %
    against 2 %), the observed rule ``floor(target * n)`` is used and ``supported`` is False; the
    report then says how many more images would support it. ``"observed"``: always the observed rule.
    """
    observed = min(math.floor(target * n + 1e-9), max(n - 1, 0))
    supported = n > 0 and clopper_pearson_upper(0, n, confidence) <= target
    if targets_on == "observed" or not supported:
        return observed, supported
    lo, hi = 0, min(observed + 1, n)  # bound(lo) <= target < bound(hi): k/n > target there
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if clopper_pearson_upper(mid, n, confidence) <= target:
            lo = mid
        else:
            hi = mid
    return lo, True


def _good_stats(good: Scores, lower: float, upper: float, policy: CalibrationPolicy,
                allowed: tuple[int, bool] = (0, False)) -> GoodStats:
    fr = int(np.count_nonzero(good >= upper))
    return GoodStats(
        allowed=allowed[0], supported=allowed[1],
        n=int(good.size),
        false_rejects=fr,
        rechecks=int(np.count_nonzero((good >= lower) & (good < upper))),
        false_reject_rate=fr / good.size,
        false_reject_upper=clopper_pearson_upper(fr, good.size, policy.confidence),
        extra_needed=extra_needed(fr, good.size, policy.false_reject_budget, policy.confidence),
        score_median=float(np.median(good)),
        score_max=float(good.max()),
    )


def _class_stats(name: str, good: Scores, d: Scores, lower: float, upper: float, p: CalibrationPolicy,
                 allowed: tuple[int, bool] = (0, False)) -> ClassStats:
    esc = int(np.count_nonzero(d < lower))
    rej = int(np.count_nonzero(d >= upper))
    return ClassStats(
        allowed=allowed[0], supported=allowed[1],
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


def _tail(extreme_first: Scores, span: float) -> tuple[float, float, float]:
    """The exponential tail of one side's scores, sorted from the most extreme inwards (peaks over a
    threshold): ``(p0, u, s)`` with ``u`` the score after the k most extreme (k = a quarter of the
    images, 2 to 10), ``p0 = k / (n + 1)`` the chance of a new score beyond ``u`` and ``s`` their mean
    distance from ``u``, floored at 1 % of ``span``. A new score lies beyond ``u`` by more than ``x``
    with about ``p0 exp(-x / s)``."""
    n = extreme_first.size
    k = int(min(10, max(2, n // 4), n - 1))
    u = float(extreme_first[k]) if k > 0 else float(extreme_first[0])
    excess = np.abs(extreme_first[:k] - u)
    s = max(float(np.mean(excess)) if excess.size else 0.0, 0.01 * span, 1e-12)
    return k / (n + 1), u, s


def _tail_point(extreme_first: Scores, rate: float, outwards: float) -> float:
    """Where one side's modelled tail (:func:`_tail` over the whole score range) puts ``rate`` of new
    scores beyond: from ``u`` towards ``outwards`` (+1 the goods' upper tail, -1 a defect class's lower
    one); ``u`` itself when the tail's start is already that rare (the calibration scores decide alone)."""
    p0, u, s = _tail(extreme_first, max(abs(float(extreme_first[0] - extreme_first[-1])), 1e-12))
    return u if p0 <= rate else u + outwards * s * math.log(p0 / rate)


def gap_threshold(good: Scores, classes: Mapping[str, Scores], t_fr: float, t_esc: float,
                  policy: CalibrationPolicy) -> float:
    """The single threshold in a gap (``t_fr <= t_esc``): where the risk to both targets is least.

    Each side's tail beyond its calibration scores is modelled as exponential (peaks over a threshold:
    the k most extreme scores' mean excess over the next one is the scale; k = a quarter of the images,
    2 to 10), so a new good part exceeds t with about (k / (n + 1)) exp(-(t - u) / s), and a new defect
    of a class falls below t likewise. The threshold minimises false rejects / budget plus the escapes
    of every class / target on a grid across the gap. Why not the middle: the side with few or widely
    spread scores (typically 10-20 defects per class against 50-60 out-of-fold goods) has the heavier
    unseen tail, so the threshold moves away from it (the quality suite's bottle: 3 of 11 test
    contamination defects fell below the middle of the gap while every test good stayed far under it).
    """
    span = max(t_esc - t_fr, 1e-12)
    ts = np.linspace(t_fr, t_esc, 513)
    p0, u, s = _tail(np.sort(good)[::-1], span)  # goods: the upper tail
    fr = p0 * np.exp(-np.maximum(ts - u, 0.0) / s)
    within = fr <= policy.false_reject_budget
    if policy.gap == "escape_first" and within.any():  # as far from the defects as the budget allows
        return float(ts[int(np.argmax(within))])
    risk = fr / max(policy.false_reject_budget, 1e-6)
    for d in classes.values():
        p0, u, s = _tail(np.sort(d), span)  # defects: the lower tail
        risk = risk + p0 * np.exp(-np.maximum(u - ts, 0.0) / s) / max(policy.escape_target, 1e-6)
    return float(ts[int(np.argmin(risk))])


def _thresholds(t_fr: float, t_esc: float | None, policy: CalibrationPolicy, good: Scores,
                classes: Mapping[str, Scores]) -> tuple[float, float]:
    if t_esc is None:
        return t_fr, t_fr
    if policy.band == "recheck" or (policy.band == "automate" and t_esc < t_fr):
        # overlap: lower = t_esc and upper = t_fr are the highest accept and the lowest reject threshold
        # the targets allow, so this band is the narrowest, i.e. the largest automated share
        return min(t_esc, t_fr), max(t_esc, t_fr)
    if t_esc < t_fr:  # one threshold on overlap: protecting against escapes wins
        return t_esc, t_esc
    t = gap_threshold(good, classes, t_fr, t_esc, policy)  # t_esc is not None: classes has scores
    return t, t


def calibrate(
    good_scores: npt.ArrayLike,
    defect_scores: Mapping[str, npt.ArrayLike],
    policy: CalibrationPolicy | None = None,
    *,
    quiet: bool = False,
) -> CalibrationResult:
    """Choose thresholds from held-out good scores and defect scores per class. The warnings are logged unless
    ``quiet`` (a trial calibration, e.g. the verdict head's weight choice); they are in the result either way.

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
    conf, on = policy.confidence, policy.targets_on
    allow_g = allowed_errors(good.size, policy.false_reject_budget, conf, on)
    allow_c = {n: allowed_errors(d.size, policy.escape_target, conf, on) for n, d in classes.items()}
    t_fr = (tail_reject_threshold(good, policy.false_reject_budget, allow_g[0])
            if policy.reject_tail == "model" and not allow_g[1]
            else false_reject_threshold(good, policy.false_reject_budget, allow_g[0]))
    t_esc = min((_class_escape_threshold(d, policy, allow_c[n][0]) for n, d in classes.items()), default=None)
    if t_esc is None:
        warnings.append(
            "NO DEFECT IMAGES: threshold is the good-score quantile for the false-reject budget; "
            "the escape rate is unknown. Calibrate with defect images before production (lineguard calibrate)"
        )
    lower, upper = _thresholds(t_fr, t_esc, policy, good, classes)
    if policy.accept_ceiling is not None and lower > policy.accept_ceiling:  # a verdict head's bundle: never
        warnings.append(  # accept more than the plain engine; say what holds the line back, and what moves it
            f"the accept threshold is held at {policy.accept_ceiling:.6g}, the plain anomaly engine's (accept_ceiling: "
            f"the verdict head accepts no part the bank alone would not); the fused scores alone would put it at "
            f"{lower:.6g}. More defect images raise that cap: lineguard calibrate recalibrates it from the plain "
            "engine's scores (a bundle trained before stop 24 keeps it: retrain) (docs/calibration.md, 'The accept "
            "ceiling')")
        lower, upper = policy.accept_ceiling, max(upper, policy.accept_ceiling)
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise CalibrationError(f"calibration produced non-finite thresholds ({lower}, {upper})")
    per_class = tuple(_class_stats(n, good, d, lower, upper, policy, allow_c[n]) for n, d in classes.items())
    for c in per_class:
        if c.auroc < 0.6:
            warnings.append(f"defect class {c.name!r} is barely separable from good parts (AUROC {c.auroc:.2f})")
    good_stats = _good_stats(good, lower, upper, policy, allow_g)
    if upper == t_fr and good_stats.false_rejects > allow_g[0]:  # the modelled good tail let one more through
        warnings.append(
            f"the reject threshold follows the good scores' modelled tail (reject_tail: model): the good image "
            f"with score {good[good >= upper].min():.4g} scores above it and counts as a false reject; look at it "
            "in report/scores.csv: an atypical good part, or a defect filed under good/"
        )
    if good_stats.rechecks > 0.2 * good.size:
        warnings.append(f"the uncertainty band sends {good_stats.rechecks}/{good.size} good parts to recheck")
    unsupported = _unsupported(good_stats, per_class, policy)
    if unsupported and policy.targets_on == "bound":
        warnings.append(unsupported)
    everything = np.concatenate([good, *classes.values()])
    share = float(np.mean((everything < lower) | (everything >= upper)))
    for w in () if quiet else warnings:
        log.warning("calibration: %s", w)
    return CalibrationResult(
        lower=lower, upper=upper, mode="defects" if per_class else "good_only", policy=policy,
        good=good_stats, classes=per_class, warnings=tuple(warnings), t_false_reject=t_fr, t_escape=t_esc,
        automated_share=share, curve=operating_curve(good, classes, lower, upper, conf),
    )


def _class_escape_threshold(d: Scores, policy: CalibrationPolicy, allowed: int) -> float:
    """The accept threshold one class allows: its calibration scores' (``allowed`` escapes), lowered to
    its modelled tail's ``escape_target`` point with ``escape_tail: model``."""
    t = escape_threshold(d, policy.escape_target, allowed)
    return min(t, tail_escape_threshold(d, policy.escape_target)) if policy.escape_tail == "model" else t


def _unsupported(g: GoodStats, classes: Sequence[ClassStats], policy: CalibrationPolicy) -> str:
    """One sentence naming each set too small for its target's bound, and how many more images would do."""
    conf = policy.confidence
    parts = []
    if not g.supported:
        parts.append(f"good {g.n} images (false-reject bound here {100 * g.false_reject_upper:.1f} % vs budget "
                     f"{100 * policy.false_reject_budget:.1f} %; {_more(g.extra_needed)})")
    for c in classes:
        if not c.supported:
            parts.append(f"{c.name} {c.n} images (escape bound here {100 * c.escape_upper:.1f} % vs target "
                         f"{100 * policy.escape_target:.1f} %; {_more(c.extra_needed)})")
    if not parts:
        return ""
    return (f"too few images to support the targets on their {100 * conf:.0f} % bounds (not even with no errors): "
            + "; ".join(parts) + ". Until then the targets hold on the observed rates only")


def _more(extra: int | None) -> str:
    return "no finite number proves a zero rate" if extra is None else f"+{extra} scored correctly would"
