"""Section ``drift`` of the data-loop benchmark (scripts/bench_data_loop.py): false alarms on
undrifted parts and detection delay of simulated drifts, through the edge's own DriftMonitor fed
part by part after ``decide`` (drained on this thread, so a run is deterministic)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from data_loop_common import QUIET, Image, copy_into, load_casting, log
from prometheus_client import CollectorRegistry

from lineguard.bundle import Bundle
from lineguard.drift import DriftMonitor
from lineguard.drift_detect import DriftConfig
from lineguard.drift_measures import RegionPx
from lineguard_models.backtest import Judge
from lineguard_models.pipeline import TrainConfig, train

# --------------------------------------------------------------------------------------------
# 2. drift detection


def drift_transform(kind: str, rng: np.random.Generator) -> Callable[[Image], Image]:
    """A simulated drift applied to an 8-bit image (process drifts swap the part instead)."""
    def clip(x: npt.NDArray[np.float32]) -> Image:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    if kind.startswith("illumination"):
        gain = 1.0 + int(kind.split("_")[1]) / 100.0
        return lambda im: clip(im.astype(np.float32) * gain)
    if kind == "blur":
        return lambda im: cv2.GaussianBlur(im, (0, 0), 1.5)
    if kind == "noise":
        return lambda im: clip(im.astype(np.float32) + rng.normal(0.0, 5.0, im.shape).astype(np.float32))
    if kind == "geometry":
        def scale(im: Image) -> Image:  # a larger part variant: 8 % bigger about the image centre
            h, w = im.shape[:2]
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.08)
            return cv2.warpAffine(im, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        return scale
    if kind == "shift":  # the fixture moved: the part sits 12 px to the right (integer shift, no resampling)
        return lambda im: np.ascontiguousarray(np.concatenate([np.repeat(im[:, :1], 12, axis=1), im[:, :-12]], axis=1))
    return lambda im: im  # "defect_parts": the parts themselves change


def jitter(im: Image, rng: np.random.Generator) -> Image:
    """Undrifted variation of a looped image: lamp flicker, gain within +-1 %."""
    out: Image = np.clip(np.rint(im.astype(np.float32) * rng.uniform(0.99, 1.01)), 0, 255).astype(np.uint8)
    return out


class DriftRun:
    """One monitor, fed part by part as the service feeds it (observe after decide)."""

    def __init__(self, judge: Judge, bundle: Bundle, regions: Sequence[str] = ()) -> None:
        self.judge = judge
        cfg = DriftConfig(imaging_roi_px=tuple(
            RegionPx(**dict(zip(("x_px", "y_px", "width_px", "height_px"), map(int, r.split(",")), strict=True)))
            for r in regions))
        self.monitor = DriftMonitor.from_bundle(bundle, CollectorRegistry(), cfg)
        self.parts = 0
        self.alarms: list[tuple[int, str, str]] = []  # (part, state, message) on entering an alarm state
        self._state = self.monitor.assessment.state

    def feed(self, image: Image) -> str:
        decision, _, _ = self.judge.judge(image)
        self.monitor.observe(image, decision)
        self.monitor.drain()
        self.parts += 1
        state = str(self.monitor.assessment.state)
        if state in ("imaging", "process") and state != self._state:
            self.alarms.append((self.parts, state, self.monitor.assessment.message))
        self._state = state
        return state

    def drifted(self) -> set[str]:
        return {n for n, f in self.monitor.assessment.features.items() if f.drifted}


def looped(images: Sequence[Image], n: int, rng: np.random.Generator) -> Iterator[Image]:
    for i in range(n):
        if i % len(images) == 0:
            order = rng.permutation(len(images))
        yield jitter(images[order[i % len(images)]], rng)


def bench_drift(root: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(a.seeds[0])
    goods = sorted((root / "train/good").glob("*"))
    goods = [goods[i] for i in rng.permutation(len(goods))]
    defs = sorted((root / "train/def_front").glob("*"))
    n_ref = a.drift_train_good
    copy_into(work / "drift_data/good", goods[:n_ref])
    copy_into(work / "drift_data/def_front", defs[:a.init_def])
    cfg = TrainConfig(seed=a.seeds[0], input_size_px=a.size, bank_size=a.bank, holdout_fraction=a.drift_holdout,
                      golden_good=1, golden_defect=1)
    bundle = train(work / "drift_data", work / "drift_bundle", cfg, progress=QUIET)
    n_held = len(bundle.manifest.calibration["reference"]["features"]["brightness"])
    stream_good = [load_casting(p) for p in goods[n_ref:]]
    stream_def = [load_casting(p) for p in defs[a.init_def:]]
    judge = Judge(bundle)
    out: dict[str, Any] = {"bundle_fit_good": n_ref - n_held, "reference_good": n_held,
                           "stream_good_images": len(stream_good), "thresholds": bundle.manifest.thresholds.lower}
    try:
        run = DriftRun(judge, bundle, a.drift_roi)
        t0 = time.monotonic()
        states = Counter(run.feed(im) for im in looped(stream_good, a.clean_parts, rng))
        out["clean"] = {"parts": run.parts, "alarms": run.alarms, "states": dict(states),
                        "ms_per_part": 1000 * (time.monotonic() - t0) / run.parts}
        log(f"drift clean: {out['clean']}")
        out["drifts"] = [drift_case(judge, bundle, kind, rep, stream_good, stream_def, a)
                         for kind in a.drift_kinds for rep in range(a.drift_reps)]
    finally:
        judge.close()
    return out


def drift_case(judge: Judge, bundle: Bundle, kind: str, rep: int, goods: Sequence[Image],
               defs: Sequence[Image], a: argparse.Namespace) -> dict[str, Any]:
    """Lead-in of undrifted parts, then the drift; detected = an alarm state in which a feature that
    was not drifted at onset is drifted (a false alarm already active at onset does not count)."""
    rng = np.random.default_rng([a.seeds[0], rep, len(kind)])
    run = DriftRun(judge, bundle, a.drift_roi)
    for im in looped(goods, a.lead_in, rng):
        run.feed(im)
    at_onset = run.drifted()
    change = drift_transform(kind, rng)
    source = defs if kind == "defect_parts" else goods
    delay, found = None, None
    for im in looped(source, a.max_drift_parts, rng):
        state = run.feed(change(im))
        if state in ("imaging", "process") and run.drifted() - at_onset:
            delay, found = run.parts - a.lead_in, (state, sorted(run.drifted()), run.monitor.assessment.message)
            break
    res = {"kind": kind, "rep": rep, "delay_parts": delay, "drifted_at_onset": sorted(at_onset), "alarm": found}
    log(f"drift {kind} rep {rep}: delay {delay} {found} (drifted at onset: {sorted(at_onset)})")
    return res


