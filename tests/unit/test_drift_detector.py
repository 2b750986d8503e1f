"""Drift monitor: PSI, image quality, and the imaging-vs-process classification on synthetic streams.

Reference = 60 good synthetic surfaces with scores drawn from the "calibration" distribution; the
stream = fresh good surfaces, optionally darkened, blurred, noisy, or (process change) with scores
from a shifted distribution while the images stay as calibrated.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Verdict
from lineguard.drift import DRIFT_THREAD_NICE_DELTA, DriftMetrics, DriftMonitor
from lineguard.drift_detect import IMAGING_ADVICE, PROCESS_ADVICE, DriftConfig, DriftDetector
from lineguard.drift_measures import DriftReference, measure_quality, psi, reference_from_images
from lineguard_models.synth import SynthConfig, render_pixels

CFG = SynthConfig(width_px=160, height_px=120, seed=11)
LOWER = 1.0
Image = npt.NDArray[Any]


@functools.cache
def _good(index: int) -> Image:  # cached: streams reuse the same parts; callers never modify it
    return render_pixels(CFG, "good", index)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    rng = np.random.default_rng(0)
    images = [_good(i) for i in range(60)]
    doc = reference_from_images(images, list(rng.normal(0.6, 0.1, 60)), 255)
    return DriftReference.from_json(doc)


def _stream(reference: DriftReference, n: int, *, change: Callable[[Image], Image] | None = None,
            score_mean: float = 0.6, seed: int = 1) -> str:
    det = DriftDetector(reference=reference, lower=LOWER,
                        config=DriftConfig(min_parts=60, eval_every_parts=20, min_reference_parts=50))
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = _good(1000 + i)
        if change is not None:
            img = change(img)
        det.add(measure_quality(img, 255), float(min(rng.normal(score_mean, 0.1), LOWER - 1e-3)))
    return det.last.state + "|" + det.last.message


def _scale(f: float) -> Callable[[Image], Image]:
    return lambda img: np.clip(img.astype(np.float32) * f, 0, 255).astype(np.uint8)


def _blur(img: Image) -> Image:
    return np.asarray(cv2.GaussianBlur(img, (0, 0), 2.0))


def _noise(img: Image) -> Image:
    rng = np.random.default_rng(int(img[0, 0]))
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_psi_zero_for_same_distribution_and_large_for_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 2000)
    assert psi(ref, rng.normal(0, 1, 2000), 10) < 0.03
    assert 0.1 < psi(ref, rng.normal(0.5, 1, 2000), 10) < 0.5
    assert psi(ref, rng.normal(5, 1, 500), 10) > 5  # outside the range: large but finite
    assert psi(np.zeros(100), np.zeros(50), 10) == pytest.approx(0.0)


def test_quality_measures_move_the_right_way() -> None:
    img = _good(3)
    q = measure_quality(img, 255)
    assert measure_quality(_scale(0.8)(img), 255).brightness == pytest.approx(q.brightness * 0.8, rel=0.02)
    assert measure_quality(_blur(img), 255).focus < 0.5 * q.focus
    assert measure_quality(_noise(img), 255).focus > 1.2 * q.focus
    assert q.saturation == 0.0 and measure_quality(np.full((50, 50), 255, np.uint8), 255).saturation == 1.0
    rgb = np.stack([img] * 3, axis=2)
    assert measure_quality(rgb, 255).brightness == pytest.approx(q.brightness)
    assert measure_quality(img.astype(np.uint16) * 257, 65535).brightness == pytest.approx(q.brightness, rel=1e-3)


def test_stable_stream_stays_ok(reference: DriftReference) -> None:
    assert _stream(reference, 200).startswith("ok|")


@pytest.mark.parametrize(("change", "word"), [(_scale(0.8), "brightness"), (_blur, "focus"), (_noise, "focus")])
def test_imaging_drift_named(reference: DriftReference, change: Callable[[Image], Image], word: str) -> None:
    state = _stream(reference, 120, change=change)
    assert state.startswith("imaging|" + IMAGING_ADVICE), state
    assert word in state


def test_process_drift_when_images_are_as_calibrated(reference: DriftReference) -> None:
    state = _stream(reference, 160, score_mean=0.85)
    assert state.startswith("process|" + PROCESS_ADVICE), state


def test_warming_up_and_no_reference() -> None:
    det = DriftDetector(reference=None, lower=LOWER, config=DriftConfig())
    assert det.last.state == "no_reference"
    ref = DriftReference.build(scores=[0.5] * 10, qualities=[measure_quality(_good(i), 255) for i in range(10)],
                               source="calibration")
    det = DriftDetector(reference=ref, lower=LOWER, config=DriftConfig(min_parts=50, eval_every_parts=10))
    for i in range(20):
        det.add(measure_quality(_good(i), 255), 0.5)
    assert det.last.state == "warming_up"


def _decision(verdict: Verdict, score: float, *, failsafe: bool = False) -> Decision:
    return Decision(seq=0, part_id=0, verdict=verdict, anomaly_score=score, bundle_id="b", camera_id="c",
                    t_capture_ns=0, t_decided_ns=1, failsafe=failsafe)


def test_monitor_thread_metrics_and_drops(reference: DriftReference) -> None:
    reg = CollectorRegistry()
    cfg = DriftConfig(min_parts=20, eval_every_parts=10, queue_size=4, min_reference_parts=50)
    mon = DriftMonitor(config=cfg, metrics=DriftMetrics(reg),
                       detector=DriftDetector(reference=reference, lower=LOWER, config=cfg), max_value=255)
    img = _scale(0.7)(_good(5))
    for _ in range(6):  # no thread yet: the queue holds 4, two are dropped and counted
        mon.observe(img, _decision(Verdict.ACCEPT, 0.6))
    mon.observe(img, _decision(Verdict.FAILSAFE, float("nan"), failsafe=True))  # ignored, not a drop
    assert reg.get_sample_value("lineguard_drift_dropped_total", {"reason": "queue_full"}) == 2
    mon.start()
    for i in range(40):
        mon.observe(_scale(0.7)(_good(200 + i)), _decision(Verdict.ACCEPT, 0.6))
        if i % 4 == 3:
            mon.stop()  # drains what is queued, so nothing is dropped for speed reasons here
            mon.start()
    mon.stop()
    assert reg.get_sample_value("lineguard_drift_observed_total") == 4 + 40 - (
        reg.get_sample_value("lineguard_drift_dropped_total", {"reason": "queue_full"}) - 2)
    assert mon.assessment.state == "imaging"
    assert reg.get_sample_value("lineguard_drift_state", {"state": "imaging"}) == 1.0
    assert reg.get_sample_value("lineguard_drift_feature_drifted", {"feature": "brightness"}) == 1.0
    assert reg.get_sample_value("lineguard_drift_psi", {"feature": "brightness"}) > 1.0


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities: Linux only")
def test_monitor_thread_runs_below_the_process_priority(reference: DriftReference) -> None:
    # image statistics must yield the CPU to the engine's threads in a burst (issue 18)
    cfg = DriftConfig()
    mon = DriftMonitor(config=cfg, metrics=DriftMetrics(CollectorRegistry()),
                       detector=DriftDetector(reference=reference, lower=LOWER, config=cfg), max_value=255)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    mon.start()
    try:
        thread = mon._thread
        assert thread is not None and thread.native_id is not None
        deadline = time.monotonic() + 5.0
        while os.getpriority(os.PRIO_PROCESS, thread.native_id) == base and time.monotonic() < deadline:
            time.sleep(0.01)  # the thread lowers its own priority as it starts
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(19, base + DRIFT_THREAD_NICE_DELTA)
    finally:
        mon.stop()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller is untouched


def test_reference_round_trips_and_is_capped() -> None:
    ref = DriftReference.build(scores=np.linspace(0, 1, 2000), qualities=[], source="calibration")
    doc = ref.to_json()
    assert len(doc["features"]["score"]) == 512
    back = DriftReference.from_json(doc)
    assert back.values["score"][0] == 0.0 and back.values["score"][-1] == 1.0
    with pytest.raises(ValueError, match="version"):
        DriftReference.from_json({"version": 99})


def test_thin_reference_is_learned_on_the_line_instead_of_raising_false_alarms() -> None:
    # a 5-image bundle reference (as a tiny training gives) must not alarm on an unchanged line
    rng = np.random.default_rng(0)
    thin = DriftReference.from_json(reference_from_images([_good(i) for i in range(5)],
                                                          list(rng.normal(0.6, 0.1, 5)), 255))
    cfg = DriftConfig(window_parts=100, min_parts=60, eval_every_parts=20, min_reference_parts=80)
    det = DriftDetector(reference=thin, lower=LOWER, config=cfg)
    for i in range(300):
        det.add(measure_quality(_good(2000 + i), 255), float(min(rng.normal(0.6, 0.1), LOWER - 1e-3)))
    assert det.last.state == "ok", det.last.message
    # ... and the learned reference still catches a real change afterwards
    for i in range(150):
        det.add(measure_quality(_scale(0.8)(_good(3000 + i)), 255), 0.6)
    assert det.last.state == "imaging" and "brightness" in det.last.message, det.last.message
