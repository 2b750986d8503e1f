"""Drift monitor with ``imaging_roi_px``: image quality measured where only lighting and optics act,
so a change of the parts is named process drift, not imaging drift.

Frames are synthetic brushed-metal surfaces; the left 40 columns play the fixture/background the
part never covers, the rest is "the part". A process change darkens the part (a darker alloy) and
raises the accepted parts' scores; a lighting change darkens the whole frame.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Verdict
from lineguard.drift import DriftMetrics, DriftMonitor
from lineguard.drift_detect import IMAGING_ADVICE, PROCESS_ADVICE, WHOLE_FRAME_CAVEAT, DriftConfig, DriftDetector
from lineguard.drift_measures import DriftReference, RegionPx, measure_quality, reference_from_images
from lineguard.errors import ImageError
from lineguard_models.synth import SynthConfig, render_pixels

SYNTH = SynthConfig(width_px=160, height_px=120, seed=5)
BACKGROUND = RegionPx(x_px=0, y_px=0, width_px=40, height_px=120)
LOWER = 1.0
Image = npt.NDArray[Any]


@functools.cache
def _frame(index: int) -> Image:
    return render_pixels(SYNTH, "good", index)


def _darker_part(img: Image) -> Image:
    out = img.astype(np.float32)
    out[:, 40:] *= 0.75
    return out.astype(np.uint8)


def _darker_light(img: Image) -> Image:
    return (img.astype(np.float32) * 0.8).astype(np.uint8)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    rng = np.random.default_rng(0)
    return DriftReference.from_json(reference_from_images([_frame(i) for i in range(120)],
                                                          list(rng.normal(0.6, 0.1, 120)), 255))


def _run(reference: DriftReference, regions: tuple[RegionPx, ...], change: Callable[[Image], Image],
         score_mean: float) -> str:
    cfg = DriftConfig(window_parts=120, min_parts=60, eval_every_parts=20, min_reference_parts=100,
                      imaging_roi_px=regions)
    det = DriftDetector(reference=reference, lower=LOWER, config=cfg)
    rng = np.random.default_rng(1)
    for i in range(400):  # 150 parts as calibrated (the regions' reference is learned here), then the change
        img, mean = (_frame(500 + i), 0.6) if i < 150 else (change(_frame(500 + i)), score_mean)
        det.add(measure_quality(img, 255, regions=regions), float(min(rng.normal(mean, 0.1), LOWER - 1e-3)))
    return det.last.state + "|" + det.last.message


def test_regions_measure_only_their_pixels() -> None:
    img = _frame(1)
    q = measure_quality(img, 255, regions=(BACKGROUND,))
    assert measure_quality(_darker_part(img), 255, regions=(BACKGROUND,)) == q
    assert measure_quality(_darker_light(img), 255, regions=(BACKGROUND,)).brightness == pytest.approx(
        q.brightness * 0.8, rel=0.02)
    # two regions pool their pixels: the mean of a dark and a bright half
    half = np.zeros((20, 40), np.uint8)
    half[:, 20:] = 200
    two = (RegionPx(x_px=0, y_px=0, width_px=20, height_px=20), RegionPx(x_px=20, y_px=0, width_px=20, height_px=20))
    both = measure_quality(half, 255, regions=two)
    assert both.brightness == pytest.approx(100 / 255) and both.focus == 0.0  # region borders are no edges


def test_region_outside_the_frame_is_a_clear_error() -> None:
    with pytest.raises(ImageError, match=r"outside the 160x120 frame: fix drift\.imaging_roi_px"):
        measure_quality(_frame(1), 255, regions=(RegionPx(x_px=150, y_px=0, width_px=20, height_px=20),))


def test_changed_parts_read_as_imaging_on_whole_frames(reference: DriftReference) -> None:
    state = _run(reference, (), _darker_part, score_mean=0.85)
    assert state.startswith("imaging|" + IMAGING_ADVICE) and WHOLE_FRAME_CAVEAT in state, state


def test_changed_parts_read_as_process_with_a_background_region(reference: DriftReference) -> None:
    state = _run(reference, (BACKGROUND,), _darker_part, score_mean=0.85)
    assert state.startswith("process|" + PROCESS_ADVICE), state


def test_lighting_still_reads_as_imaging_with_a_background_region(reference: DriftReference) -> None:
    state = _run(reference, (BACKGROUND,), _darker_light, score_mean=0.6)
    assert state.startswith("imaging|" + IMAGING_ADVICE) and "brightness" in state, state
    assert WHOLE_FRAME_CAVEAT not in state


def test_unchanged_line_stays_ok_with_regions(reference: DriftReference) -> None:
    assert _run(reference, (BACKGROUND,), lambda im: im, score_mean=0.6).startswith("ok|")


def test_misplaced_region_counts_every_frame_and_never_raises(reference: DriftReference) -> None:
    reg = CollectorRegistry()
    cfg = DriftConfig(imaging_roi_px=(RegionPx(x_px=0, y_px=0, width_px=400, height_px=8),))
    mon = DriftMonitor(config=cfg, metrics=DriftMetrics(reg),
                       detector=DriftDetector(reference=reference, lower=LOWER, config=cfg), max_value=255)
    d = Decision(seq=0, part_id=0, verdict=Verdict.ACCEPT, anomaly_score=0.5, bundle_id="b", camera_id="c",
                 t_capture_ns=0, t_decided_ns=1)
    for i in range(5):
        mon.observe(_frame(i), d)
    mon.drain()
    assert reg.get_sample_value("lineguard_drift_dropped_total", {"reason": "measure_error"}) == 5
    assert reg.get_sample_value("lineguard_drift_observed_total") == 0
