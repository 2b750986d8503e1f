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
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from lineguard.bundle import Bundle
from lineguard.contracts import Decision, Verdict
from lineguard.drift_detect import STATES, DriftAssessment, DriftConfig, DriftDetector
from lineguard.drift_measures import FEATURES, DriftReference, measure_quality
from lineguard.errors import ImageError

log = logging.getLogger(__name__)
# The drift thread's nice value above the process's: image statistics are background work. On a busy
# CPU the engine's threads go first and the drift queue drops (counted, drop_newest) instead of the
# measurement taking CPU from inspection (a burst ran at 90 % of the raw engine, issue 18).
DRIFT_THREAD_NICE_DELTA = 10


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
        _lower_own_priority(DRIFT_THREAD_NICE_DELTA)
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


def _lower_own_priority(delta: int) -> None:
    """Raise the calling thread's nice value by ``delta`` (Linux: PRIO_PROCESS with a thread id
    applies to that thread only; raising nice needs no privilege). Elsewhere: a no-op, logged."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + delta))
    except (OSError, AttributeError) as exc:
        log.debug("drift thread keeps its priority (%s)", exc)
