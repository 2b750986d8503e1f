"""Time budget of automatic configuration: one deadline for the whole ``lineguard train`` call.

Data flow (inside ``autoconfig.train_auto``): a :class:`Deadline` started before the dataset scan
-> the first candidate within the latency budget (always run) records what its folds took
(:class:`FoldTimes`) -> :func:`final_estimate`: the final training (the bank fitted on every good
image, ONNX export, scoring of the extra good and defect images, the defect classifier when the
line has defect classes, the report) estimated from those measurements -> a reserve of
:data:`SAFETY` x that estimate; the search gets the rest -> :func:`predict_s` per further
candidate (skipped when it would end past its search deadline) -> :class:`FoldGuard` before each
fold (a candidate whose remaining folds cannot finish is stopped and cannot win; its engine was
priced before any fold, ``autoprice.py``) -> after the search the classifier's own selection gets what is left
(:func:`classifier_select_budget`) -> ``train_auto`` logs the total, with a WARNING over budget.

Why not seconds per pixel: the greedy coreset makes one pass over every patch row per row it keeps,
and the bank is a share of the patches, so it grows with (patches)^2 x share, while the backbone's
feature pass grows with the patches. Each fit is therefore timed in two parts (the feature pass up
to the last batch, then the coreset selection; ONNX export counted with the first) and each part
scaled by its own law: linear for features, quadratic x bank-share ratio for the coreset, their
geometric mean (backbone + nearest-neighbour search over the bank) for scoring. The final bank
holds K/(K-1) times a fold's images and scales the same way. Predictions are then corrected by
what the folds of the later candidates already run (tried or stopped) took against their
prediction (x 0.5 to 4); the first candidate's own final training is measured, not corrected.

Must never: stop or skip the first candidate (the search would have nothing to choose from), or let
a stopped candidate be chosen (its out-of-fold scores are incomplete).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lineguard.preprocess import InputSpec
from lineguard_models.data import Dataset
from lineguard_models.pipeline import (
    TrainConfig,
    anomaly_model_config,
    load_camera_profile,
    make_input_spec,
    pick_defects,
    split_good,
)

Clock = Callable[[], float]
SAFETY = 1.25  # the final training's reserve = SAFETY x its estimate
# The defect classifier is not tried in the search, so its cost is modelled from the default's scoring:
# one backbone pass per labelled image and per photometric copy / orientation view, each costing
# CLASSIFIER_PASS_FACTOR x one ONNX Runtime scoring of the default's fold engine, plus the fixed part
# (head cross-validation of its candidates, ONNX export, shared-backbone check). Demo line (80 defect images,
# 2 copies, 2-core box at load ~6, 2026-12-06): 1.5 estimated 40 s against 57 s measured; hence 2.5.
CLASSIFIER_PASS_FACTOR = 2.5
CLASSIFIER_FIXED_S = 20.0
REPORT_IMAGES = 12  # report.html anomaly maps and golden images, scored again
REPORT_FIXED_S = 5.0  # plots, report, manifest, hashes
CORRECTION_RANGE = (0.5, 4.0)  # measured / predicted of tried candidates, applied to later predictions


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(1, len(xs))


@dataclass(slots=True)
class Deadline:
    """The one wall-clock budget of a ``train_auto`` call, measured from its start."""

    budget_s: float
    clock: Clock = time.monotonic
    t0: float = math.nan

    def __post_init__(self) -> None:
        if math.isnan(self.t0):
            self.t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self, reserve_s: float = 0.0) -> float:
        """Seconds until the deadline less ``reserve_s`` (negative: past it)."""
        return self.budget_s - reserve_s - self.elapsed()


@dataclass(slots=True)
class FoldTimes:
    """What one candidate's folds took (the cost model's measurements)."""

    fit_s: list[float] = field(default_factory=list)  # fitting + ONNX export, per fold
    coreset_s: list[float] = field(default_factory=list)  # the part of fit_s after the feature pass, per fold
    score_s: list[float] = field(default_factory=list)  # ONNX Runtime scoring, per fold
    scored: list[int] = field(default_factory=list)  # images scored, per fold
    fitted: list[int] = field(default_factory=list)  # good images fitted, per fold

    def fold_s(self) -> float:
        """Mean seconds of one fold (fit, export, scoring)."""
        n = len(self.fit_s)
        return (sum(self.fit_s) + sum(self.score_s)) / n if n else math.nan

    def per_image_s(self) -> float:
        """Seconds of one image scored by a fold's engine."""
        return sum(self.score_s) / max(1, sum(self.scored))

    def total_s(self) -> float:
        return sum(self.fit_s) + sum(self.score_s)

    def scaled_fold_s(self, lin: float, quad: float) -> float:
        """One fold of a recipe whose patch work is ``lin`` x and coreset work ``quad`` x this one's."""
        features = _mean(self.fit_s) - _mean(self.coreset_s)
        return features * lin + _mean(self.coreset_s) * quad + _mean(self.score_s) * math.sqrt(lin * quad)


@dataclass(frozen=True, slots=True)
class Work:
    """A candidate's size for the cost model: patches per image (pixels x tiles x bank turns) and the
    bank's share of the patches, or its fixed row count (``TrainConfig.bank_fraction`` None); ``pixels``
    alone drives the classifier's backbone passes."""

    patches: float
    bank_share: float
    pixels: float
    fixed_rows: float | None = None

    def _rows(self) -> float:
        return self.fixed_rows if self.fixed_rows is not None else self.bank_share * self.patches

    @property
    def bank_grows(self) -> bool:
        """True when the bank is a share of the patches (then the coreset grows with the images squared)."""
        return self.fixed_rows is None

    def linear(self, base: Work) -> float:
        """Feature work relative to ``base``'s: the patch count."""
        return self.patches / base.patches

    def quadratic(self, base: Work) -> float:
        """Coreset work relative to ``base``'s: patches x bank rows (see the module docstring)."""
        return (self.patches * self._rows()) / (base.patches * base._rows())


@dataclass(frozen=True, slots=True)
class FinalEstimate:
    """Seconds the final training is expected to take, by part."""

    fit_s: float
    score_s: float
    classifier_s: float
    report_s: float

    @property
    def anomaly_s(self) -> float:
        return self.fit_s + self.score_s + self.report_s

    @property
    def total_s(self) -> float:
        return self.anomaly_s + self.classifier_s

    def reserve_s(self) -> float:
        return SAFETY * self.total_s

    def record(self) -> dict[str, float]:
        return {"fit_s": round(self.fit_s, 1), "score_s": round(self.score_s, 1),
                "classifier_s": round(self.classifier_s, 1), "report_s": round(self.report_s, 1),
                "total_s": round(self.total_s, 1)}


def final_estimate(t: FoldTimes, *, n_train: int, n_score: int, classifier_passes: int, lin: float = 1.0,
                   quad: float = 1.0, pixel_ratio: float = 1.0, bank_grows: bool = True) -> FinalEstimate:
    """The final training of a recipe whose work is ``lin`` / ``quad`` x the measured one's (``t``):
    the bank on all ``n_train`` good images (``bank_grows``: a share of the patches, else fixed rows),
    ``n_score`` images scored for calibration, ``classifier_passes`` backbone passes of the classifier
    (0: no classifier), the report."""
    grow = n_train / max(1.0, _mean([float(n) for n in t.fitted]))  # final bank vs a fold's
    rows = grow if bank_grows else 1.0
    coreset = _mean(t.coreset_s)
    fit = (_mean(t.fit_s) - coreset) * lin * grow + coreset * quad * grow * rows
    per_image = t.per_image_s() * math.sqrt(lin * quad) * rows  # backbone + search of a bank `rows` x larger
    classifier = (classifier_passes * t.per_image_s() * pixel_ratio * CLASSIFIER_PASS_FACTOR + CLASSIFIER_FIXED_S
                  if classifier_passes else 0.0)
    return FinalEstimate(fit_s=fit, score_s=per_image * n_score, classifier_s=classifier,
                         report_s=per_image * REPORT_IMAGES + REPORT_FIXED_S)


# feature-pass time of a backbone against Lite0's at the same input (8 images 224x224 to stage5, torch, 2
# threads on this 2-core box, 2026-12-06: Lite0 189 ms, Lite1 235 ms, Lite2 261 ms); a larger backbone counts
# as that many more patches, which over-prices its coreset a little (its patch features are only ~10 %
# wider) rather than run past the budget
BACKBONE_COST: dict[str, float] = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.25, "efficientnet_lite2": 1.4}


def work_of(cfg: TrainConfig, spec: InputSpec) -> Work:
    """A recipe's size for the cost model: input pixels x tiles x the bank's turned copies x the backbone's cost
    (:data:`BACKBONE_COST`), the bank's share of every patch seen (both as ``pipeline.anomaly_model_config`` fits
    them: the camera profile's turns included)."""
    from lineguard_models.anomaly import turns_used

    model = anomaly_model_config(cfg, spec)
    turns = turns_used(model.bank_turns, spec.input_height, spec.input_width)
    pixels = float(spec.input_width * spec.input_height * spec.tiles.count)  # the classifier's backbone is Lite0
    share = model.bank_fraction if model.bank_fraction is not None else 1.0
    fixed = float(cfg.bank_size) if cfg.bank_fraction is None else None
    cost = BACKBONE_COST.get(cfg.backbone, 1.0)
    return Work(patches=pixels * cost * turns, bank_share=share, pixels=pixels, fixed_rows=fixed)


def classifier_passes(ds: Dataset, cfg: TrainConfig) -> int:
    """Backbone passes the defect classifier of a bundle trained with ``cfg`` will make (one per defect
    image and per photometric copy and orientation view); 0 when it will not be trained (the
    conditions of ``classifier_bundle.classifier_for_bundle``)."""
    from lineguard_models.augment import CameraProfile
    from lineguard_models.classifier import MIN_IMAGES_PER_CLASS, training_views

    counts = [len(ds.defects(c)) for c in ds.defect_classes]
    if len(counts) < 2 or min(counts) < MIN_IMAGES_PER_CLASS or cfg.tile_rows * cfg.tile_cols != 1:
        return 0
    spec = make_input_spec(ds, split_good(ds, cfg)[0], cfg)
    declared = load_camera_profile(cfg.camera_profile, spec)
    views, free = training_views(declared, spec, cfg.classifier)  # free: the per-line choice's views candidates
    copies = (declared or CameraProfile.conservative_for(spec)).copies_per_image
    return sum(counts) * (len(free or views) + copies)


@dataclass(slots=True)
class Plan:
    """What the first candidate measured: the final training's estimate and later predictions."""

    first: FoldTimes
    base: Work
    n_train: int
    n_score: int
    passes: int
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (measured, predicted) s of later ones

    @classmethod
    def measured(cls, ds: Dataset, cfg: TrainConfig, times: FoldTimes, work: Work) -> Plan:
        """From the first candidate (``cfg``, its ``times``): the final training's sizes on ``ds``."""
        train_s, extra_good = split_good(ds, cfg)
        n_score = len(extra_good) + len(pick_defects(ds, cfg.max_defects_per_class, cfg.seed))
        return cls(first=times, base=work, n_train=len(train_s), n_score=n_score, passes=classifier_passes(ds, cfg))

    def ratios(self, work: Work, corrected: bool = True) -> tuple[float, float]:
        """(linear, quadratic) work of ``work`` against the first candidate's, corrected by what the later
        candidates took against their prediction."""
        c = correction(self.pairs) if corrected else 1.0
        return work.linear(self.base) * c, work.quadratic(self.base) * c

    def predict_s(self, work: Work, folds: int) -> float:
        return predict_s(self.first, *self.ratios(work), folds)

    def estimate(self, work: Work, corrected: bool = True) -> FinalEstimate:
        """The final training of ``work``'s recipe; ``corrected`` False for the first candidate's own, which
        was measured, not predicted."""
        lin, quad = self.ratios(work, corrected)
        return final_estimate(self.first, n_train=self.n_train, n_score=self.n_score, classifier_passes=self.passes,
                              lin=lin, quad=quad, pixel_ratio=work.pixels / self.base.pixels,
                              bank_grows=work.bank_grows)


def predict_s(first: FoldTimes, lin: float, quad: float, folds: int) -> float:
    """Seconds a candidate whose work is ``lin`` / ``quad`` x the first candidate's takes in the search."""
    return first.scaled_fold_s(lin, quad) * folds


def correction(pairs: list[tuple[float, float]]) -> float:
    """Mean measured / predicted seconds of the candidates tried after the first, clamped."""
    if not pairs:
        return 1.0
    mean = sum(m / max(p, 1e-9) for m, p in pairs) / len(pairs)
    return min(max(mean, CORRECTION_RANGE[0]), CORRECTION_RANGE[1])


@dataclass(slots=True)
class FoldGuard:
    """Asked before each fold after the first of a candidate: None to go on, or the status that stops
    it (the remaining folds would end past ``deadline``, an absolute ``clock`` time)."""

    deadline: float
    folds: int
    predicted_fold_s: float
    clock: Clock = time.monotonic

    def before_fold(self, k: int, times: FoldTimes) -> str | None:
        """Before fold ``k`` (0-based; folds 0..k-1 done)."""
        per_fold = times.fold_s() if times.fit_s else self.predicted_fold_s
        return self._over(k, per_fold * (self.folds - k))

    def _over(self, done: int, need_s: float) -> str | None:
        left = self.deadline - self.clock()
        if need_s <= left:
            return None
        return (f"stopped: time budget after fold {done}/{self.folds} (the rest needs about {need_s:.0f} s, "
                f"{max(left, 0.0):.0f} s left)")


def classifier_select_budget(left_s: float, estimate: FinalEstimate, configured_s: float) -> float | None:
    """The classifier's selection budget (feature pass and cross-validations) after the search: what
    is left once the rest of the final training is reserved, at most ``configured_s``; None when the
    configured budget already fits."""
    share = left_s - SAFETY * estimate.anomaly_s
    if share >= configured_s:
        return None
    return max(1.0, round(share, 1))


def overrun_warning(total_s: float, budget_s: float, parts: dict[str, Any]) -> str | None:
    """The WARNING text when ``total_s`` went over ``budget_s``: by how much and what took the time."""
    if total_s <= budget_s:
        return None
    took = ", ".join(f"{k} {v:.0f} s" for k, v in parts.items() if isinstance(v, (int, float)))
    return (f"automatic configuration took {total_s:.0f} s, {total_s - budget_s:.0f} s over its "
            f"{budget_s:.0f} s time budget ({took})")
