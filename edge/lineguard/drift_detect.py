"""Drift detector: rolling windows of the measures, PSI against the reference, and the verdict.

Where it sits: between the measures (``drift_measures.py``) and the threaded monitor
(``drift.py``), which owns one detector per active bundle and feeds it on its own thread. It
classifies what moved: **imaging drift** (an image-quality feature; check lighting, lens, focus)
or **process drift** (image quality as calibrated, the scores of accepted parts moved). Imaging
wins when both moved. ``DriftConfig`` (``drift:`` in the line config) lives here, next to the
rules it tunes.

Must never: start threads or touch metrics (single-threaded, pure apart from logging).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from lineguard.drift_measures import (
    FEATURES,
    QUALITY_FEATURES,
    DriftReference,
    ImageQuality,
    RegionPx,
    accepted_reference_scores,
    psi,
)

log = logging.getLogger(__name__)

STATES = ("no_reference", "warming_up", "ok", "imaging", "process")
IMAGING_ADVICE = "imaging drift (check lighting, lens, focus)"
PROCESS_ADVICE = "process drift (parts changed: collect and re-teach)"
WHOLE_FRAME_CAVEAT = ("measured on whole frames, so changed parts move it too: drift.imaging_roi_px on a "
                      "background region tells the two apart")


class DriftConfig(BaseModel):
    """Drift monitor settings (``drift:`` in the line config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_parts: int = Field(500, ge=20, le=100_000, description="rolling window per feature, parts")
    min_parts: int = Field(100, ge=10, le=100_000, description="parts in a window before it is judged")
    eval_every_parts: int = Field(25, ge=1, le=10_000, description="re-evaluate PSI every this many parts")
    sample_every_n: int = Field(1, ge=1, le=1000, description="measure every n-th judged frame")
    psi_alert: float = Field(0.25, gt=0.0, le=10.0, description="PSI at or above which a feature drifted")
    psi_clear: float = Field(0.1, ge=0.0, le=10.0, description="PSI below which a drifted feature recovers")
    bins: int = Field(10, ge=2, le=50, description="PSI bins (reference quantiles) at most")
    min_relative_shift: float = Field(
        0.05, ge=0.0, le=10.0,
        description="median shift (fraction of the reference median) a feature needs to count as drifted",
    )
    min_saturation_shift: float = Field(
        0.005, ge=0.0, le=1.0, description="saturated-pixel share shift (absolute) needed to count as drifted"
    )
    saturation_level: float = Field(0.98, gt=0.5, le=1.0, description="pixel >= this x full scale is saturated")
    queue_size: int = Field(64, ge=1, le=10_000, description="frames waiting for the drift thread at most")
    imaging_roi_px: tuple[RegionPx, ...] = Field(
        (), max_length=16,
        description="regions that see lighting and optics but never the part (background, fixture, grey "
        "card); image quality is measured there only, so a changed part is not mistaken for imaging drift. "
        "Empty = whole frame. Their reference is learned from the first min_reference_parts parts",
    )
    min_reference_parts: int = Field(
        100, ge=10, le=100_000,
        description="a bundle reference with fewer values than this is too thin to judge by (false alarms): "
        "such a feature's reference is learned from the first parts on the line instead (logged)",
    )


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    psi: float
    window_median: float
    reference_median: float
    shift: float  # relative (or absolute for saturation) median shift, signed
    drifted: bool


@dataclass(frozen=True, slots=True)
class DriftAssessment:
    """The monitor's verdict after one evaluation."""

    state: str  # one of STATES
    message: str
    features: Mapping[str, FeatureDrift]
    parts_seen: int


class DriftDetector:
    """Rolling windows + PSI + classification. Single-threaded; the monitor owns it."""

    def __init__(self, *, reference: DriftReference | None, lower: float, config: DriftConfig) -> None:
        self._cfg = config
        self._ref: dict[str, npt.NDArray[np.float64]] = {}
        if reference is not None:
            self._ref = {k: v for k, v in reference.values.items() if k != "score" and v.size}
            scores = accepted_reference_scores(reference, lower)
            if scores.size:
                self._ref["score"] = scores
        # thin references (a small calibration set) give persistent false alarms: learn those
        # features' references from the first parts on the line instead, and say so. Quality measured
        # in regions cannot be compared with the bundle's whole-frame reference: learned too.
        on_line = set(QUALITY_FEATURES) if config.imaging_roi_px else set()
        if on_line:
            log.info("drift: image quality measured in %d region(s) (drift.imaging_roi_px): its reference is "
                     "learned from the first %d parts on the line", len(config.imaging_roi_px),
                     config.min_reference_parts)
        thin = sorted(k for k, v in self._ref.items() if v.size < config.min_reference_parts and k not in on_line)
        self._learning: dict[str, list[float]] = {k: [] for k in (*thin, *on_line)}
        for k in self._learning:
            self._ref.pop(k, None)
        if thin:
            log.warning("drift reference too thin for %s (< %d values): learning it from the first %d parts on "
                        "the line; drift already present then goes unnoticed", thin,
                        config.min_reference_parts, config.min_reference_parts)
        self._win: dict[str, deque[float]] = {k: deque(maxlen=config.window_parts) for k in FEATURES}
        self._drifted: set[str] = set()
        self.parts_seen = 0
        self._since_eval = 0
        self.last = DriftAssessment(state="no_reference" if not (self._ref or self._learning) else "warming_up",
                                    message="", features={}, parts_seen=0)

    def add(self, quality: ImageQuality, accepted_score: float | None) -> DriftAssessment | None:
        """Add one frame; returns a fresh assessment every ``eval_every_parts`` frames, else None."""
        for name, value in quality.as_dict().items():
            self._take(name, value)
        if accepted_score is not None and math.isfinite(accepted_score):
            self._take("score", accepted_score)
        self.parts_seen += 1
        self._since_eval += 1
        if self._since_eval < self._cfg.eval_every_parts:
            return None
        self._since_eval = 0
        self.last = self.evaluate()
        return self.last

    def _take(self, name: str, value: float) -> None:
        learning = self._learning.get(name)
        if learning is None:
            self._win[name].append(value)
            return
        learning.append(value)
        if len(learning) >= self._cfg.min_reference_parts:
            self._ref[name] = np.sort(np.asarray(learning, dtype=np.float64))
            del self._learning[name]
            log.info("drift reference for %s learned from %d parts on the line", name, len(learning))

    def _feature(self, name: str) -> FeatureDrift | None:
        ref = self._ref.get(name)
        win = self._win[name]
        if ref is None or len(win) < self._cfg.min_parts:
            return None
        w = np.fromiter(win, dtype=np.float64, count=len(win))
        value = psi(ref, w, self._cfg.bins)
        wm, rm = float(np.median(w)), float(np.median(ref))
        if name == "saturation":
            shift, big_enough = wm - rm, abs(wm - rm) >= self._cfg.min_saturation_shift
        else:
            shift = (wm - rm) / max(abs(rm), 1e-12)
            big_enough = abs(shift) >= self._cfg.min_relative_shift
        # hysteresis: a drifted feature stays drifted until its PSI falls below psi_clear
        was = name in self._drifted
        drifted = (value >= self._cfg.psi_alert and big_enough) or (was and value >= self._cfg.psi_clear)
        if drifted:
            self._drifted.add(name)
        else:
            self._drifted.discard(name)
        return FeatureDrift(psi=value, window_median=wm, reference_median=rm, shift=shift, drifted=drifted)

    def evaluate(self) -> DriftAssessment:
        if not self._ref and not self._learning:
            return DriftAssessment(state="no_reference", message="no drift reference in the bundle",
                                   features={}, parts_seen=self.parts_seen)
        feats = {n: f for n in FEATURES if (f := self._feature(n)) is not None}
        if not any(n in feats for n in QUALITY_FEATURES):
            return DriftAssessment(state="warming_up", message=f"{self.parts_seen} parts seen",
                                   features=feats, parts_seen=self.parts_seen)
        imaging = [n for n in QUALITY_FEATURES if n in feats and feats[n].drifted]
        if imaging:
            detail = ", ".join(_describe(n, feats[n]) for n in imaging)
            if not self._cfg.imaging_roi_px:
                detail += f"; {WHOLE_FRAME_CAVEAT}"
            return DriftAssessment(state="imaging", message=f"{IMAGING_ADVICE}: {detail}", features=feats,
                                   parts_seen=self.parts_seen)
        if "score" in feats and feats["score"].drifted:
            return DriftAssessment(state="process", message=f"{PROCESS_ADVICE}: {_describe('score', feats['score'])}",
                                   features=feats, parts_seen=self.parts_seen)
        return DriftAssessment(state="ok", message="", features=feats, parts_seen=self.parts_seen)


def _describe(name: str, f: FeatureDrift) -> str:
    if name == "saturation":
        return f"saturated pixels {f.reference_median:.2%} -> {f.window_median:.2%} (PSI {f.psi:.2f})"
    label = "accepted-part score" if name == "score" else name
    return f"{label} {f.shift:+.0%} (PSI {f.psi:.2f})"
