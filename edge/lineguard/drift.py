"""Drift monitoring in the edge service: is the line still the line the bundle was calibrated on?

Data flow: inspection thread -> :meth:`DriftMonitor.observe` (a sampling check and a non-blocking
``put`` on a bounded queue, overflow policy ``drop_newest``, every drop counted) -> the monitor's
own thread -> :func:`measure_quality` (brightness, contrast, focus = variance of the Laplacian,
saturation share) and the anomaly score of *accepted* parts -> rolling windows -> population
stability index (PSI) against the bundle's calibration reference -> ``lineguard_drift_*`` metrics
and one classification:

* **imaging drift** ("check lighting, lens, focus"): an image-quality feature moved;
* **process drift** ("parts changed: collect and re-teach"): image quality is as calibrated but
  the scores of accepted parts moved.

Imaging wins when both moved: a darker or blurred image shifts scores too, so fix the camera first.
Measured on whole frames, the image statistics also move when the *parts* change (a darker alloy, a
larger part), so a process change can read as imaging drift. ``imaging_roi_px`` names regions that
see the lighting and optics but never the part (background, fixture, a grey card): image quality is
then measured there only, a changed part leaves it alone, and the two kinds separate. The bundle's
reference is measured on whole frames, so with regions the quality reference is learned from the
first ``min_reference_parts`` parts on the line (logged).

The reference is ``manifest.calibration["reference"]`` (written by the training pipeline from the
held-out good calibration images, measured with this module's :func:`measure_quality`, so the line
and the reference use the same code). Older bundles without it fall back to the good golden
images, with a warning, because two or three images make a thin reference.

Must never: block or slow the inspection thread (no image work in :meth:`observe`), raise into
it, or change a verdict; it only observes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field

from lineguard.bundle import Bundle
from lineguard.contracts import Decision, Verdict
from lineguard.errors import ImageError

log = logging.getLogger(__name__)

QUALITY_FEATURES = ("brightness", "contrast", "focus", "saturation")
FEATURES = ("score", *QUALITY_FEATURES)
STATES = ("no_reference", "warming_up", "ok", "imaging", "process")
IMAGING_ADVICE = "imaging drift (check lighting, lens, focus)"
PROCESS_ADVICE = "process drift (parts changed: collect and re-teach)"
WHOLE_FRAME_CAVEAT = ("measured on whole frames, so changed parts move it too: drift.imaging_roi_px on a "
                      "background region tells the two apart")
REFERENCE_VERSION = 1
_MAX_REFERENCE_VALUES = 512  # quantiles kept per feature: enough for 10 PSI bins, small manifest
_PSI_EPS = 1e-4  # empty-bin floor; keeps PSI finite when a window leaves the reference range
_FOCUS_CROP_PX = 512  # focus is measured at native resolution (downsampling would hide blur)
_STATS_PIXELS = 65_536  # brightness/contrast/saturation on a strided subsample of about this many


class RegionPx(BaseModel):
    """A rectangle in frame pixels (after the camera's own ROI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x_px: int = Field(ge=0, le=65_535, description="left edge, pixels from the frame's left")
    y_px: int = Field(ge=0, le=65_535, description="top edge, pixels from the frame's top")
    width_px: int = Field(ge=8, le=65_535, description="width in pixels")
    height_px: int = Field(ge=8, le=65_535, description="height in pixels")


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


# ---------------------------------------------------------------------------------------------
# pure measurements


@dataclass(frozen=True, slots=True)
class ImageQuality:
    """Scale-free image statistics; brightness/contrast as fractions of full scale."""

    brightness: float  # mean / full scale
    contrast: float  # standard deviation / full scale
    focus: float  # variance of the Laplacian of the central crop, image in [0, 1]
    saturation: float  # share of pixels at or above saturation_level x full scale

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in QUALITY_FEATURES}


def measure_quality(image: npt.NDArray[Any], max_value: int, *, saturation_level: float = 0.98,
                    regions: Sequence[RegionPx] = ()) -> ImageQuality:
    """Image quality of one frame (mono HxW or RGB HxWx3, uint8/uint16); about 1 ms at 5 MP.

    Whole frame by default (focus on the central crop); with ``regions``, on those rectangles only
    (their pixels pooled; focus = area-weighted mean of each region's Laplacian variance, so region
    borders never count as edges).
    """
    if image.ndim not in (2, 3) or image.size == 0 or max_value <= 0:
        raise ImageError(f"drift: cannot measure an image of shape {image.shape} with full scale {max_value}")
    if regions:
        return _measure_regions(image, max_value, saturation_level, regions)
    h, w = image.shape[:2]
    step = max(1, math.isqrt(h * w // _STATS_PIXELS))
    sub = np.asarray(image[::step, ::step], dtype=np.float32)
    y0, x0 = max(0, (h - _FOCUS_CROP_PX) // 2), max(0, (w - _FOCUS_CROP_PX) // 2)
    crop = image[y0 : y0 + _FOCUS_CROP_PX, x0 : x0 + _FOCUS_CROP_PX]
    return _quality(sub, [(_laplacian_var(crop, max_value), crop.shape[0] * crop.shape[1])], max_value,
                    saturation_level, colour=image.ndim == 3)


def _measure_regions(image: npt.NDArray[Any], max_value: int, saturation_level: float,
                     regions: Sequence[RegionPx]) -> ImageQuality:
    h, w = image.shape[:2]
    pixels: list[npt.NDArray[np.float32]] = []
    focus: list[tuple[float, int]] = []
    for r in regions:
        if r.x_px + r.width_px > w or r.y_px + r.height_px > h:
            raise ImageError(f"drift: region x={r.x_px} y={r.y_px} {r.width_px}x{r.height_px} px lies outside "
                             f"the {w}x{h} frame: fix drift.imaging_roi_px")
        crop = image[r.y_px : r.y_px + r.height_px, r.x_px : r.x_px + r.width_px]
        step = max(1, math.isqrt(crop.shape[0] * crop.shape[1] // _STATS_PIXELS))
        pixels.append(np.asarray(crop[::step, ::step], dtype=np.float32).reshape(-1, *crop.shape[2:]))
        focus.append((_laplacian_var(crop, max_value), crop.shape[0] * crop.shape[1]))
    return _quality(np.concatenate(pixels), focus, max_value, saturation_level, colour=image.ndim == 3)


def _laplacian_var(crop: npt.NDArray[Any], max_value: int) -> float:
    f = np.asarray(crop, dtype=np.float32)
    if f.ndim == 3:
        f = f.mean(axis=2)
    return float(cv2.Laplacian(f / float(max_value), cv2.CV_32F, ksize=3).var())


def _quality(sub: npt.NDArray[np.float32], focus: Sequence[tuple[float, int]], max_value: int,
             saturation_level: float, *, colour: bool) -> ImageQuality:
    """``sub``: pixels (colour in the last axis when ``colour``); ``focus``: (variance, area) pairs."""
    grey = sub.mean(axis=-1) if colour else sub
    area = sum(a for _, a in focus)
    return ImageQuality(
        brightness=float(grey.mean()) / max_value,
        contrast=float(grey.std()) / max_value,
        focus=sum(v * a for v, a in focus) / area,
        saturation=float(np.count_nonzero(sub >= saturation_level * max_value)) / sub.size,
    )


def psi(reference: npt.NDArray[np.float64], window: npt.NDArray[np.float64], bins: int) -> float:
    """Population stability index of ``window`` against ``reference``; bins are reference quantiles.

    Proportions are floored at 1e-4 so a window entirely outside the reference range gives a large
    finite value. Identical distributions give 0; 0.1 is a moderate and 0.25 a significant shift.
    """
    if reference.size == 0 or window.size == 0:
        return 0.0
    k = max(2, min(bins, reference.size // 5 or 2))
    inner = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, k + 1)[1:-1]))
    # right-closed bins so a reference pinned at one value (e.g. saturation 0) has its own bin
    ref_p = np.bincount(np.searchsorted(inner, reference, side="left"), minlength=inner.size + 1) / reference.size
    win_p = np.bincount(np.searchsorted(inner, window, side="left"), minlength=inner.size + 1) / window.size
    ref_p = np.maximum(ref_p, _PSI_EPS)
    win_p = np.maximum(win_p, _PSI_EPS)
    return float(np.sum((win_p - ref_p) * np.log(win_p / ref_p)))


# ---------------------------------------------------------------------------------------------
# the reference


@dataclass(frozen=True, slots=True)
class DriftReference:
    """Per-feature reference values (sorted), from the calibration's good images."""

    values: Mapping[str, npt.NDArray[np.float64]]
    source: str  # "calibration" or "golden"

    @classmethod
    def build(cls, *, scores: Iterable[float], qualities: Iterable[ImageQuality], source: str) -> DriftReference:
        cols: dict[str, list[float]] = {"score": [float(s) for s in scores if math.isfinite(s)]}
        qs = list(qualities)
        for name in QUALITY_FEATURES:
            cols[name] = [getattr(q, name) for q in qs]
        return cls(values={k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in cols.items()}, source=source)

    def to_json(self) -> dict[str, Any]:
        """The manifest form: at most 512 quantiles per feature, 6 significant digits."""
        out: dict[str, Any] = {"version": REFERENCE_VERSION, "features": {}}
        for name, vals in self.values.items():
            if vals.size > _MAX_REFERENCE_VALUES:
                vals = np.quantile(vals, np.linspace(0.0, 1.0, _MAX_REFERENCE_VALUES))
            out["features"][name] = [float(f"{v:.6g}") for v in vals]
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], source: str = "calibration") -> DriftReference:
        if doc.get("version") != REFERENCE_VERSION:
            raise ValueError(f"drift reference version {doc.get('version')} unsupported")
        feats = doc.get("features", {})
        return cls(values={k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in feats.items()
                           if k in FEATURES}, source=source)

    @classmethod
    def for_bundle(cls, bundle: Bundle, *, saturation_level: float = 0.98) -> DriftReference | None:
        """The manifest's reference, else the good golden images (thin: warned), else None."""
        m = bundle.manifest
        doc = m.calibration.get("reference")
        if isinstance(doc, Mapping):
            return cls.from_json(doc)
        from lineguard.imageio import read_image  # only on this fallback path

        goods = [g for g in m.golden if g.label == "good"]
        if not goods:
            log.warning("bundle %s has no drift reference and no good golden image: drift monitoring off",
                        m.bundle_id)
            return None
        log.warning("bundle %s has no drift reference (older training pipeline); using its %d good golden "
                    "images, too few for reliable drift alarms: retrain to get one", m.bundle_id, len(goods))
        qualities = [measure_quality(read_image(bundle.path(g.file)), m.input.max_value,
                                     saturation_level=saturation_level) for g in goods]
        return cls.build(scores=[g.expected_score for g in goods], qualities=qualities, source="golden")


def accepted_reference_scores(reference: DriftReference, lower: float) -> npt.NDArray[np.float64]:
    """Reference scores that the bundle would accept: compare like with like (the window only
    holds accepted parts, so its distribution is cut at ``lower`` too)."""
    ref = reference.values.get("score", np.empty(0))
    return ref[ref < lower]


# ---------------------------------------------------------------------------------------------
# the detector (pure: no threads, no metrics)


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


# ---------------------------------------------------------------------------------------------
# metrics and the threaded monitor


class DriftMetrics:
    """``lineguard_drift_*``, declared once in the registry the service passes in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.psi = Gauge("lineguard_drift_psi", "PSI of the rolling window against the bundle's calibration "
                         "reference", ["feature"], registry=r)
        self.window_median = Gauge("lineguard_drift_window_median", "Median of the rolling window",
                                   ["feature"], registry=r)
        self.reference_median = Gauge("lineguard_drift_reference_median", "Median of the calibration reference",
                                      ["feature"], registry=r)
        self.feature_drifted = Gauge("lineguard_drift_feature_drifted", "1 while a feature counts as drifted",
                                     ["feature"], registry=r)
        self.state = Gauge("lineguard_drift_state", "1 for the current drift state, 0 for the others",
                           ["state"], registry=r)
        self.observed_total = Counter("lineguard_drift_observed", "Frames measured by the drift monitor",
                                      registry=r)
        self.dropped_total = Counter("lineguard_drift_dropped", "Frames the drift monitor did not measure",
                                     ["reason"], registry=r)
        for name in FEATURES:
            for g in (self.psi, self.window_median, self.reference_median, self.feature_drifted):
                g.labels(feature=name)
        for reason in ("queue_full", "measure_error"):
            self.dropped_total.labels(reason=reason)
        self.set_state("warming_up")

    def set_state(self, state: str) -> None:
        for s in STATES:
            self.state.labels(state=s).set(1.0 if s == state else 0.0)

    def publish(self, a: DriftAssessment) -> None:
        self.set_state(a.state)
        for name in FEATURES:
            f = a.features.get(name)
            if f is not None:
                self.psi.labels(feature=name).set(f.psi)
                self.window_median.labels(feature=name).set(f.window_median)
                self.reference_median.labels(feature=name).set(f.reference_median)
                self.feature_drifted.labels(feature=name).set(1.0 if f.drifted else 0.0)


@dataclass(frozen=True, slots=True)
class _Job:
    image: npt.NDArray[Any]
    accepted_score: float | None
    detector: DriftDetector  # the detector of the bundle that judged the frame


class DriftMonitor:
    """Observes judged frames off the inspection thread; build with :meth:`from_bundle`."""

    def __init__(self, *, config: DriftConfig, metrics: DriftMetrics, detector: DriftDetector,
                 max_value: int) -> None:
        self._cfg = config
        self._m = metrics
        self._detector = detector
        self._max_value = max_value
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=config.queue_size)
        self._count = 0
        self._thread: threading.Thread | None = None
        self._logged_state = detector.last.state
        self._measure_error_logged = False
        self._m.set_state(detector.last.state)

    @classmethod
    def from_bundle(cls, bundle: Bundle, registry: CollectorRegistry,
                    config: DriftConfig | None = None) -> DriftMonitor:
        """Read the bundle's reference (file I/O on the fallback path) and declare the metrics."""
        cfg = config or DriftConfig()
        metrics = DriftMetrics(registry)
        return cls(config=cfg, metrics=metrics, detector=_detector_for(bundle, cfg),
                   max_value=bundle.manifest.input.max_value)

    def rebind(self, bundle: Bundle) -> None:
        """After a changeover: new reference, fresh windows (frames in flight finish on the old one)."""
        self._detector = _detector_for(bundle, self._cfg)
        self._max_value = bundle.manifest.input.max_value
        self._m.set_state(self._detector.last.state)

    @property
    def assessment(self) -> DriftAssessment:
        return self._detector.last

    def observe(self, image: npt.NDArray[Any], decision: Decision) -> None:
        """Hand one judged frame over (inspection thread): O(1), never blocks, never raises."""
        if decision.failsafe:
            return  # not a judged part: its image may be the reason (corrupt, wrong size)
        self._count += 1
        if self._count % self._cfg.sample_every_n:
            return
        score = decision.anomaly_score if decision.verdict is Verdict.ACCEPT else None
        try:
            self._queue.put_nowait(_Job(image=image, accepted_score=score, detector=self._detector))
        except queue.Full:  # policy "drop_newest": drift statistics tolerate gaps, the line does not wait
            self._m.dropped_total.labels(reason="queue_full").inc()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="drift", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the frames already queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._thread = None

    def drain(self) -> None:
        """Process queued frames on the caller's thread (tests, replay without a thread)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._process(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._process(job)

    def _process(self, job: _Job) -> None:
        try:
            q = measure_quality(job.image, self._max_value, saturation_level=self._cfg.saturation_level,
                                regions=self._cfg.imaging_roi_px)
        except (ImageError, cv2.error, ValueError) as exc:
            # a misplaced region fails every frame: say it once, loudly; count every frame
            level = logging.WARNING if not self._measure_error_logged else logging.DEBUG
            self._measure_error_logged = True
            log.log(level, "drift: frame not measured (counted in lineguard_drift_dropped): %s", exc)
            self._m.dropped_total.labels(reason="measure_error").inc()
            return
        self._m.observed_total.inc()
        result = job.detector.add(q, job.accepted_score)
        if result is not None and job.detector is self._detector:
            if result.state in ("imaging", "process") and result.state != self._logged_state:
                log.warning("%s", result.message)  # once per change of state, not per evaluation
            self._logged_state = result.state
            self._m.publish(result)


def _detector_for(bundle: Bundle, cfg: DriftConfig) -> DriftDetector:
    ref = DriftReference.for_bundle(bundle, saturation_level=cfg.saturation_level)
    return DriftDetector(reference=ref, lower=bundle.manifest.thresholds.lower, config=cfg)


def reference_from_images(images: Sequence[npt.NDArray[Any]], scores: Sequence[float], max_value: int,
                          *, saturation_level: float = 0.98) -> dict[str, Any]:
    """The manifest's ``calibration["reference"]`` from good calibration images and their scores
    (called by the training pipeline so training and the line measure with the same code)."""
    qualities = [measure_quality(img, max_value, saturation_level=saturation_level) for img in images]
    return DriftReference.build(scores=scores, qualities=qualities, source="calibration").to_json()
