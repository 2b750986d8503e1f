#!/usr/bin/env python3
"""Benchmarks of the data loop (issue 6): active learning vs random labelling, drift detection
delay and false alarms, forgetting after retraining.

Sits *outside* the data flow: it drives the project's own pieces the way the line does --
``Judge`` (the edge's ``BundleRunner`` + ``decide``), ``collect_stream`` (what the publisher would
send, stored by the sink's ``FrameStore``), ``LabelBook`` + ``active.plan_shift`` (the labelling
queue), ``DatasetStore`` + ``retrain`` (whole-history retraining and the promotion gate) and
``DriftMonitor`` (``observe(image, decision)`` per part, drained on this thread so the run is
deterministic). Labels of the dataset stand in for the person.

Sections (``--only``):

* ``active``: casting ``train/`` played as a production stream through a bundle taught on a few
  images; a labelling budget B spent (a) by the project's active selection on the frames the sink
  collected, (b) at random over every part of the stream; both retrained through ``retrain`` and
  judged on casting ``test/`` (262 good / 453 def_front).
* ``drift``: undrifted good parts (false alarms per 10,000 parts) and simulated drifts (delay in
  parts from onset to the first imaging/process state).
* ``forget``: synthetic 4-class data; a new batch without one class; retrain with history vs a
  naive retrain on the new batch; per-class recall on the frozen regression set and the gate.

Skips the casting sections cleanly (exit 0) when ``../shared/datasets/casting`` is absent.
Must never: write outside ``--work`` (a temporary folder by default) and ``--json``.

    .venv/bin/python scripts/bench_data_loop.py --json /tmp/data_loop.json   # all sections, ~45 min on 2 loaded cores
    .venv/bin/python scripts/bench_data_loop.py --smoke                       # 2-3 min: it runs, numbers mean nothing
    .venv/bin/python scripts/bench_data_loop.py --summarize /tmp/data_loop.json   # the Markdown tables
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import cv2
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from scipy.stats import rankdata

from lineguard.bundle import Bundle, load_bundle
from lineguard.decision import band_width
from lineguard.drift import DriftMonitor
from lineguard.drift_detect import DriftConfig
from lineguard.drift_measures import RegionPx
from lineguard.imageio import read_image
from lineguard.sink.labels import LabelBook
from lineguard.wire import MessageKind
from lineguard_models.active import REJECT_SIDE_FIRST, SelectionConfig, plan_shift
from lineguard_models.backtest import Judge, collect_stream
from lineguard_models.data import load_image
from lineguard_models.datastore import DatasetStore, GoodUse
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.retrain import GateConfig, evaluate, gate, retrain
from lineguard_models.synth import SynthConfig, write_dataset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets"
Image = npt.NDArray[Any]
QUIET: Callable[[str], None] = lambda s: None  # noqa: E731 - the pipeline's progress sink


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pixel_key(image: Image) -> str:
    """Identity of a decoded image: the sink stores pixels losslessly, so stored == streamed."""
    return f"{image.shape}{hash(image.tobytes())}"


def load_casting(path: Path) -> Image:
    """Casting images are grey JPEGs saved as RGB: load them as the mono camera that took them."""
    image: Image = load_image(path, mono_from_rgb=True)
    return image


def copy_into(folder: Path, paths: Sequence[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copyfile(p, folder / p.name)


# --------------------------------------------------------------------------------------------
# 1. active learning vs random at equal labelling budget


@dataclass(frozen=True)
class Scores:
    """One bundle judged on casting test/ (and spare good parts, ``spare``): verdicts and scores
    against the true labels."""

    verdicts: list[str]
    scores: list[float]
    defect: list[bool]
    spare: list[bool]  # True: a spare train/good image of this seed (line figures only), not test/

    def metrics(self, defect_share: float) -> dict[str, float]:
        """test/ figures as before, plus figures at the line's defect share ``defect_share``.

        test/ holds 63 % def_front, so its reject precision is far above what the same bundle gives
        on a line with few defects, and a +9.4-point difference cannot show when random is already
        above 90.6 %. ``line_precision`` = r·TPR / (r·TPR + (1−r)·FPR): the share of rejects that are
        defective on a line with def_front share r, TPR = def_front rejected / def_front (test/),
        FPR = good rejected / good over test/good *and* the spare goods (``line_false_reject_rate``:
        more good parts, so fewer ties at 0 false rejects). ``line_precision_test``: the same with
        test/good only. ``line_recheck_rate``: the share of a line's parts a person rechecks."""
        v, d, sp = np.array(self.verdicts), np.array(self.defect), np.array(self.spare)
        t = ~sp
        rej, rec = v == "reject", v == "recheck"
        n_good, n_def = int((~d & t).sum()), int((d & t).sum())
        tpr = float((rej & d & t).sum() / n_def)
        fpr_test = float((rej & ~d & t).sum() / n_good)
        fpr_line = float((rej & ~d).sum() / (~d).sum())
        r = defect_share

        def at_line(fpr: float) -> float:
            den = r * tpr + (1 - r) * fpr
            return r * tpr / den if den > 0 else float("nan")

        return {"precision": float((rej & d & t).sum() / (rej & t).sum()) if (rej & t).any() else float("nan"),
                "false_reject_rate": fpr_test,
                "escape_rate": float(((v == "accept") & d & t).sum() / n_def),
                "recheck_rate": float(rec[t].mean()),
                "auroc": auroc(np.array(self.scores)[t], d[t]),
                "defect_reject_rate": tpr,
                "line_false_reject_rate": fpr_line,
                "line_precision": at_line(fpr_line),
                "line_precision_test": at_line(fpr_test),
                "line_recheck_rate": float(r * rec[d & t].mean() + (1 - r) * rec[~d].mean()),
                "spare_good": int(sp.sum()), "defect_share": r}


def auroc(scores: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_]) -> float:
    """Mann-Whitney AUROC with ties counted half."""
    r = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def judge_all(bundle: Bundle, images: Sequence[Image], defect: Sequence[bool],
              spare: Sequence[Image] = ()) -> Scores:
    """Judge test/ (``images``, ``defect``) and then the ``spare`` good images."""
    judge = Judge(bundle)
    try:
        out = [judge.judge(im)[0] for im in (*images, *spare)]
    finally:
        judge.close()
    return Scores(verdicts=[d.verdict.label for d in out], scores=[d.anomaly_score for d in out],
                  defect=[*defect, *(False,) * len(spare)], spare=[False] * len(images) + [True] * len(spare))


@dataclass(frozen=True)
class CastingSplit:
    init_good: list[Path]
    init_def: list[Path]
    stream: list[Path]  # shuffled mix of good and def_front, disjoint from init
    spare_good: list[Path]  # train/good images neither taught nor streamed (line false-reject figures)


def casting_split(root: Path, seed: int, n_good: int, n_def: int, n_stream: int,
                  defect_share: float = 0.5) -> CastingSplit:
    """First-teach images and a shuffled stream of ``n_stream`` parts, ``defect_share`` of them
    def_front (0.5 = the folder's own mix; a line has far fewer)."""
    rng = np.random.default_rng(seed)
    goods = sorted((root / "train/good").glob("*"))
    defs = sorted((root / "train/def_front").glob("*"))
    goods = [goods[i] for i in rng.permutation(len(goods))]
    defs = [defs[i] for i in rng.permutation(len(defs))]
    n_bad = round(defect_share * n_stream)
    stream = goods[n_good:n_good + n_stream - n_bad] + defs[n_def:n_def + n_bad]
    return CastingSplit(init_good=goods[:n_good], init_def=defs[:n_def],
                        stream=[stream[i] for i in rng.permutation(len(stream))],
                        spare_good=goods[n_good + n_stream - n_bad:])


def label_sink(sink: Path, truth: dict[str, str], only: set[str] | None) -> Counter[str]:
    """The person: label the sink's frames (``only``: these message ids) with the dataset's labels."""
    book = LabelBook.open(sink)
    counts: Counter[str] = Counter()
    try:
        for f in book.unlabelled():
            if only is not None and f.message_id not in only:
                continue
            lab = truth[pixel_key(read_image(f.image_path))]
            book.label(f.message_id, lab, labeller="bench")
            counts[lab] += 1
    finally:
        book.close()
    return counts


def active_pick(sink: Path, budget: int, seed: int, **selection: float) -> tuple[set[str], Counter[str]]:
    """The shift's selection exactly as ``lineguard label`` computes it (``selection``: SelectionConfig
    fields other than the budget and seed; none = the defaults)."""
    book = LabelBook.open(sink)
    try:
        now = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.timezone.utc)
        shift, _ = plan_shift(book, SelectionConfig(budget_per_shift=budget, seed=seed, **selection), now=now)
        picked = [f for f in book.queue(shift=shift, limit=budget) if f.selected]
    finally:
        book.close()
    return {f.message_id for f in picked}, Counter(f.selected for f in picked)


def run_active_seed(root: Path, work: Path, seed: int, a: argparse.Namespace,
                    test: tuple[list[Image], list[bool]]) -> dict[str, Any]:
    cfg = TrainConfig(seed=seed, input_size_px=a.size, bank_size=a.bank, golden_good=1, golden_defect=1,
                      calibration_folds=a.calibration_folds)
    sp = casting_split(root, seed, a.init_good, a.init_def, a.stream, a.defect_share)
    copy_into(work / "init/good", sp.init_good)
    copy_into(work / "init/def_front", sp.init_def)
    for arm in ("active", "random", *(x for x in EXTRA_ARMS if getattr(a, x))):
        DatasetStore.open(work / f"ds_{arm}").import_folder(work / "init", note="first teach")
    DatasetStore.open(work / "ds_active").materialize(work / "init_train")
    t0 = time.monotonic()
    initial = train(work / "init_train", work / "initial", cfg, progress=QUIET)
    initial_s = time.monotonic() - t0
    log(f"seed {seed}: initial bundle in {initial_s:.0f} s")
    images = [(load_casting(p), str(p)) for p in sp.stream]
    spare = [load_casting(p) for p in sp.spare_good[:a.spare_good]]
    truth = {pixel_key(im): ("good" if Path(ref).parent.name == "good" else "def_front") for im, ref in images}
    judge = Judge(initial, with_map=True)
    try:
        t0 = time.monotonic()
        line = collect_stream(judge, images, work / "sink", audit_fraction=a.audit, seed=seed,
                              near_reject_margin_bands=a.near_reject,
                              near_reject_min_margin_fraction=a.near_reject_floor)
        stream_s = time.monotonic() - t0
        rng = np.random.default_rng(seed + 1000)
        rand_idx = sorted(rng.choice(len(images), size=a.budget, replace=False))
        collect_stream(judge, [images[i] for i in rand_idx], work / "sink_random", audit_fraction=1.0, seed=seed,
                       every_as=MessageKind.AUDIT)  # a random sample of the line: what the audit lottery sends
        extra: dict[str, list[int]] = {}
        if a.oracle:
            extra["oracle"] = oracle_pick([d for _, d, _ in line], [truth[pixel_key(im)] == "good" for im, _ in images],
                                          initial.manifest.thresholds.lower, initial.manifest.thresholds.upper,
                                          a.budget)
        if a.top:  # no labels needed: the highest anomaly scores of the stream (the reject bin first)
            extra["top"] = sorted(int(i) for i in np.argsort([-d.anomaly_score for _, d, _ in line],
                                                             kind="stable")[:a.budget])
        for arm, picked_idx in extra.items():
            collect_stream(judge, [images[i] for i in picked_idx], work / f"sink_{arm}", audit_fraction=1.0, seed=seed)
    finally:
        judge.close()
    selection = {k: v for k, v in (("accept_side_weight", a.accept_side_weight),
                                   ("reject_side_width_bands", a.reject_side_width)) if v is not None}
    if a.rsf:  # the same sink, a second person labelling it with lineguard label --reject-side-first
        shutil.copytree(work / "sink", work / "sink_rsf")
    picked, reasons = active_pick(work / "sink", a.budget, seed, **selection)
    labelled = {"active": label_sink(work / "sink", truth, picked),
                "random": label_sink(work / "sink_random", truth, None)}
    arms = [("active", work / "sink"), ("random", work / "sink_random")]
    for arm in EXTRA_ARMS:
        if getattr(a, arm):
            only = active_pick(work / "sink_rsf", a.budget, seed, **REJECT_SIDE_FIRST)[0] if arm == "rsf" else None
            labelled[arm] = label_sink(work / f"sink_{arm}", truth, only)
            arms.append((arm, work / f"sink_{arm}"))
    out: dict[str, Any] = {"seed": seed, "stream_parts": len(images),
                           "stream_ms_per_part": 1000 * stream_s / len(images),
                           "stream_verdicts": dict(Counter(d.verdict.label for _, d, _ in line)),
                           "sink_frames": sum(k is not None for _, _, k in line),
                           "active_reasons": dict(reasons), "labelled": {k: dict(v) for k, v in labelled.items()},
                           "stream_kinds": dict(Counter(k.value for _, _, k in line if k is not None)),
                           # per part (score, verdict, truly good): the near_reject margin can be studied offline
                           "stream": [(d.anomaly_score, d.verdict.label, truth[pixel_key(im)] == "good")
                                      for (im, _), (_, d, _) in zip(images, line, strict=True)],
                           "bundles": {"initial": {**judge_all(initial, *test, spare).metrics(a.defect_share),
                                                   **thresholds(initial),
                                                   "train_s": initial_s}}}
    for arm, sink in arms:
        t0 = time.monotonic()
        res = retrain(work / f"ds_{arm}", work / "initial", work / f"cand_{arm}", train_cfg=cfg, sink=sink,
                      good_use=a.good_use, progress=QUIET)
        cand = load_bundle(res.candidate_path)
        out["bundles"][arm] = {**judge_all(cand, *test, spare).metrics(a.defect_share), **thresholds(cand)}
        out["bundles"][arm]["gate_passed"] = res.decision.passed
        out["bundles"][arm]["calibration_images"] = cand.manifest.calibration["images"]
        out["bundles"][arm]["fitted_images"] = cand.manifest.provenance["train_images"]
        log(f"seed {seed}: {arm} retrain + test in {time.monotonic() - t0:.0f} s: {out['bundles'][arm]}")
    return out


# bench-only arms beside active and random (flags --oracle, --top, --rsf)
EXTRA_ARMS = ("oracle", "top", "rsf")


def oracle_pick(decisions: Sequence[Any], good: Sequence[bool], lower: float, upper: float,
                budget: int) -> list[int]:
    """An upper-bound selection, not a product rule: knowing every label, the ``budget`` stream
    parts the first bundle got most wrong (good parts by how far their score lies above the accept
    threshold, def_front parts by how far below the reject threshold, in band widths), whatever the
    publisher sent. What perfect uncertainty sampling could pick at this budget."""
    width = band_width(lower, upper)
    hardness = [(d.anomaly_score - lower) / width if g else (upper - d.anomaly_score) / width
                for d, g in zip(decisions, good, strict=True)]
    return sorted(int(i) for i in np.argsort(hardness, kind="stable")[::-1][:budget])


def thresholds(bundle: Bundle) -> dict[str, float]:
    return {"lower": bundle.manifest.thresholds.lower, "upper": bundle.manifest.thresholds.upper}


def bench_active(root: Path, work: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    paths = sorted((root / "test/good").glob("*")) + sorted((root / "test/def_front").glob("*"))
    test = ([load_casting(p) for p in paths], [p.parent.name != "good" for p in paths])
    results = []
    for seed in a.seeds:
        results.append(run_active_seed(root, work / f"active_{seed}", seed, a, test))
        log(f"active seed {seed}: {json.dumps({k: v for k, v in results[-1].items() if k != 'stream'})}")
        if a.json:  # partial results survive an interrupted run (--summarize reads them)
            partial = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                       "active": results, "partial": True}
            a.json.write_text(json.dumps(partial, indent=1, default=str) + "\n", encoding="utf-8")
    return results


def bench_calib(root: Path, work: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    """The first-teach bundle of each seed trained with held-out calibration (folds 0) and with
    out-of-fold calibration (``--calib-folds``): thresholds, training time, test metrics."""
    paths = sorted((root / "test/good").glob("*")) + sorted((root / "test/def_front").glob("*"))
    test = ([load_casting(p) for p in paths], [p.parent.name != "good" for p in paths])
    rows = []
    for seed in a.seeds:
        sp = casting_split(root, seed, a.init_good, a.init_def, a.stream, a.defect_share)
        data = work / f"calib_{seed}"
        copy_into(data / "init/good", sp.init_good)
        copy_into(data / "init/def_front", sp.init_def)
        store = DatasetStore.open(data / "ds")
        store.import_folder(data / "init", note="first teach")
        store.materialize(data / "train")
        for folds in dict.fromkeys((0, *a.calib_folds)):  # held-out first, then each K once
            cfg = TrainConfig(seed=seed, input_size_px=a.size, bank_size=a.bank, golden_good=1, golden_defect=1,
                              calibration_folds=folds)
            t0 = time.monotonic()
            b = train(data / "train", data / f"bundle_k{folds}", cfg, progress=QUIET)
            row = {"seed": seed, "folds": folds, "train_s": time.monotonic() - t0, **thresholds(b),
                   "calibration_images": b.manifest.calibration["images"],
                   "fitted_images": b.manifest.provenance["train_images"],
                   **judge_all(b, *test).metrics(a.defect_share)}
            rows.append(row)
            log(f"calib seed {seed} folds {folds}: {row}")
    return rows


def calib_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = ["| calibration | good images calibrating | fitted | reject threshold (mean ± sd over seeds) | "
           "accept threshold | training time, s | reject precision | false-reject rate | recheck rate | AUROC |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for folds in dict.fromkeys(r["folds"] for r in rows):
        rs = [r for r in rows if r["folds"] == folds]
        name = "held-out" if folds == 0 else f"out-of-fold, K = {folds}"
        out.append(f"| {name} | {_ms([r['calibration_images']['good'] for r in rs], False)} | "
                   f"{_ms([r['fitted_images'] for r in rs], False)} | {_ms([r['upper'] for r in rs], False)} | "
                   f"{_ms([r['lower'] for r in rs], False)} | {_ms([r['train_s'] for r in rs], False)} | "
                   + " | ".join(_ms([r[k] for r in rs]) for k in
                                ("precision", "false_reject_rate", "recheck_rate", "auroc")) + " |")
    return out


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


# --------------------------------------------------------------------------------------------
# 3. forgetting (synthetic: 4 defect classes)


def bench_forget(work: Path, a: argparse.Namespace, strength: float, seed: int) -> dict[str, Any]:
    """History: good + scratch/pit/crack + ``stain`` (at ``strength``); new batch: no stain."""
    base = work / f"forget_{strength}_{seed}"
    syn = dict(width_px=160, height_px=120)
    write_dataset(base / "hist_main", SynthConfig(n_good=a.forget_good, n_defect_per_class=12, seed=10 * seed + 1,
                                                  defect_classes=("scratch", "pit", "crack"), **syn))
    write_dataset(base / "hist_stain", SynthConfig(n_good=0, n_defect_per_class=12, seed=10 * seed + 2,
                                                   defect_classes=("stain",), defect_strength=strength, **syn))
    write_dataset(base / "new", SynthConfig(n_good=a.forget_good, n_defect_per_class=10, seed=10 * seed + 3,
                                            defect_classes=("scratch", "pit", "crack"), **syn))
    store = DatasetStore.open(base / "store")
    store.import_folder(base / "hist_main")
    store.import_folder(base / "hist_stain")
    store.materialize(base / "hist_train")
    cfg = TrainConfig(seed=seed, input_size_px=128, bank_size=256, golden_good=1, golden_defect=1)
    train(base / "hist_train", base / "active", cfg, progress=QUIET)
    store.import_folder(base / "new", note="new batch (no stain)")
    snap = store.snapshot()
    new_root = str((base / "new").resolve())
    naive_dir = base / "naive_train"
    for r in snap.select("train"):
        if r.provenance.get("dataset") == new_root:  # the new batch's train split only
            copy_into(naive_dir / r.label, [store.path_of(r)])
    res = retrain(base / "store", base / "active", base / "with_history", train_cfg=cfg, progress=QUIET)
    naive = train(naive_dir, base / "naive", cfg, progress=QUIET)
    reg = snap.select("regression")
    ev_naive = evaluate(naive, store, reg)
    dec_naive = gate(res.active, ev_naive, GateConfig())
    classes = sorted(res.active.class_images)
    row = {"strength": strength, "seed": seed, "regression": {c: res.active.class_images[c] for c in classes},
           "good_regression": res.active.good_images}
    for name, ev, dec in (("active", res.active, None), ("with_history", res.candidate, res.decision),
                          ("naive", ev_naive, dec_naive)):
        row[name] = {"recall": {c: ev.recall(c) for c in classes}, "false_reject_rate": ev.false_reject_rate,
                     "gate": None if dec is None else {"passed": dec.passed, "reasons": list(dec.reasons)}}
    log(f"forget strength {strength} seed {seed}: {json.dumps(row)}")
    return row


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# tables


def _ms(xs: Sequence[float], pct: bool = True) -> str:
    k = 100.0 if pct else 1.0
    v = np.array(xs, dtype=np.float64) * k
    return f"{np.nanmean(v):.1f} ± {np.nanstd(v, ddof=1) if v.size > 1 else 0.0:.1f}"


def arm_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str], better_up: Sequence[str], extra: Sequence[str],
             tail: Callable[[str, list[dict[str, Any]]], str] | None = None) -> list[str]:
    """Table rows: mean ± sd of ``keys`` per arm, then each arm minus random with the seeds in which it
    was better (higher for ``better_up`` keys, lower for the others); ``tail``: extra cells per arm."""
    out = []
    for arm in ("initial", "active", "random", *extra):
        b = [r["bundles"][arm] for r in rows]
        out.append(f"| {arm} | " + " | ".join(_ms([x[k] for x in b]) for k in keys) + " |"
                   + (tail(arm, b) if tail else ""))
    for arm in ("active", *extra):
        d = {k: [r["bundles"][arm][k] - r["bundles"]["random"][k] for r in rows] for k in keys}
        wins = {k: sum((x > 0) if k in better_up else (x < 0) for x in d[k]) for k in keys}
        out.append(f"| {arm} − random | " + " | ".join(f"{_ms(d[k])} (better in {wins[k]}/{len(rows)})"
                                                       for k in keys) + (" | |" if tail else " |"))
    return out


def active_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = ("precision", "false_reject_rate", "escape_rate", "recheck_rate", "auroc")
    out = [f"Seeds {[r['seed'] for r in rows]}; mean ± sample sd, percent.", "",
           "| bundle | reject precision | false-reject rate | escape rate | recheck rate | AUROC | gate passed |",
           "|---|---|---|---|---|---|---|"]
    extra = [x for x in EXTRA_ARMS if all(x in r["bundles"] for r in rows)]

    def gates(arm: str, b: list[dict[str, Any]]) -> str:
        return " – |" if arm == "initial" else f" {sum(x['gate_passed'] for x in b)}/{len(b)} |"

    out += arm_rows(rows, keys, ("precision", "auroc"), extra, tail=gates)
    fr = {arm: float(np.mean([r["bundles"][arm]["false_reject_rate"] for r in rows]))
          for arm in ("active", "random", *extra)}
    sink = _ms([r["sink_frames"] for r in rows], False)
    n_def = {arm: _ms([r["labelled"][arm].get("def_front", 0) for r in rows], False)
             for arm in ("active", "random", *extra)}
    out += ["", "False rejects, active vs random (ratio of the means over seeds): "
            + (f"{100 * (1 - fr['active'] / fr['random']):.0f} % fewer (negative = more)." if fr["random"] > 0
             else "random has none.")
            + "".join(f" {x} vs random: {100 * (1 - fr[x] / fr['random']):.0f} % fewer."
                      for x in extra if fr["random"] > 0),
            f"Sink frames per {rows[0]['stream_parts']}-part stream: {sink}; def_front among the labelled frames: "
            + ", ".join(f"{arm} {n}" for arm, n in n_def.items()) + "."]
    if "calibration_images" in rows[0]["bundles"]["active"]:
        cal = {arm: _ms([r["bundles"][arm]["calibration_images"]["good"] for r in rows], False)
               for arm in ("active", "random")}
        fit = {arm: _ms([r["bundles"][arm]["fitted_images"] for r in rows], False) for arm in ("active", "random")}
        out.append(f"Candidates' good images: fitted (memory bank) active {fit['active']}, random {fit['random']}; "
                   f"calibration active {cal['active']}, random {cal['random']}.")
    if "upper" in rows[0]["bundles"]["initial"]:  # threshold jumps between retrains, in score units
        def jump(r: dict[str, Any], arm: str) -> float:
            return float(abs(r["bundles"][arm]["upper"] - r["bundles"]["initial"]["upper"]))
        out.append("Reject threshold change first teach -> candidate (|Δ upper|, score units; scores of good "
                   f"parts are about 35-50): active {_ms([jump(r, 'active') for r in rows], False)}, "
                   f"random {_ms([jump(r, 'random') for r in rows], False)}.")
    if "stream_kinds" in rows[0]:
        kinds = sorted({k for r in rows for k in r["stream_kinds"]})
        out.append("Sink frames by kind per stream: " + ", ".join(
            f"{k} {_ms([r['stream_kinds'].get(k, 0) for r in rows], False)}" for k in kinds) + ".")
    if "line_precision" in rows[0]["bundles"]["initial"]:
        out += ["", *line_table(rows, extra)]
    return out


def line_table(rows: Sequence[dict[str, Any]], extra: Sequence[str]) -> list[str]:
    """The same bundles at the stream's def_front share (``Scores.metrics``): what a line sees."""
    keys = ("line_precision", "line_false_reject_rate", "defect_reject_rate", "escape_rate", "line_recheck_rate")
    better_up = ("line_precision", "defect_reject_rate")
    first = rows[0]["bundles"]["initial"]
    out = [f"At the stream's def_front share ({first.get('defect_share', '?')}); good parts: test/good + "
           f"{first['spare_good']} spare train/good per seed.", "",
           "| bundle | line reject precision | line false-reject rate | def_front rejected | escape rate | "
           "line recheck rate |", "|---|---|---|---|---|---|"]
    out += arm_rows(rows, keys, better_up, extra)
    fr = {arm: float(np.mean([r["bundles"][arm]["line_false_reject_rate"] for r in rows]))
          for arm in ("initial", "active", "random", *extra)}
    tpr = {arm: float(np.mean([r["bundles"][arm]["defect_reject_rate"] for r in rows])) for arm in fr}
    share = float(first.get("defect_share", 0.5))
    pooled = {arm: share * tpr[arm] / (share * tpr[arm] + (1 - share) * fr[arm]) for arm in fr}
    if fr["random"] > 0:
        out += ["", "Line false rejects vs random (ratio of the means): " + "; ".join(
            f"{arm} {100 * (1 - fr[arm] / fr['random']):.0f} % fewer" for arm in ("active", *extra)) + "."]
    out.append("Pooled line reject precision (every seed's bundle on an equal share of the line: less swayed "
               "than the mean by a seed without false rejects, which counts as 100 %): " + ", ".join(
                   f"{arm} {100 * pooled[arm]:.1f} %" for arm in fr) + "; minus random: " + ", ".join(
                   f"{arm} {100 * (pooled[arm] - pooled['random']):+.1f} pp" for arm in ("active", *extra)) + ".")
    return out


def margin_table(rows: Sequence[dict[str, Any]], margins: Sequence[float] = (0.25, 0.5, 1.0, 2.0)) -> list[str]:
    """What a near_reject margin would have sent, from the first-teach bundle's stream verdicts:
    share of the stream's false rejects it reaches (the audit lottery reaches ``audit``) and sink
    frames it adds per 100 parts."""
    out = ["| near_reject margin (band widths) | false rejects of the stream reached | near_reject frames "
           "per 100 parts | of them good |", "|---|---|---|---|"]
    for m in margins:
        reach, load, good_share = [], [], []
        for r in rows:
            b = r["bundles"]["initial"]
            width = band_width(b["lower"], b["upper"])
            rej = [(s, g) for s, v, g in r["stream"] if v == "reject"]
            near = [(s, g) for s, g in rej if s < b["upper"] + m * width]
            fr = sum(g for _, g in rej)
            if fr:
                reach.append(sum(g for _, g in near) / fr)
            load.append(100 * len(near) / len(r["stream"]))
            if near:
                good_share.append(sum(g for _, g in near) / len(near))
        out.append(f"| {m:g} | {_ms(reach)} % ({len(reach)} seeds with false rejects) | {_ms(load, False)} | "
                   f"{_ms(good_share)} % |")
    return out


def drift_table(d: dict[str, Any]) -> list[str]:
    c = d["clean"]
    out = [f"Drift bundle: {d['bundle_fit_good']} good fitted, reference = {d['reference_good']} held-out good.",
           f"Undrifted: {c['parts']} parts, {len(c['alarms'])} alarms "
           f"({1e4 * len(c['alarms']) / c['parts']:.1f} per 10,000 parts); states {c['states']}; "
           f"{c['ms_per_part']:.1f} ms per part (judge + drift).", "",
           "| drift | delay, parts (per repetition) | state | first alarm message |", "|---|---|---|---|"]
    kinds = dict.fromkeys(r["kind"] for r in d["drifts"])
    for kind in kinds:
        rs = [r for r in d["drifts"] if r["kind"] == kind]
        delays = ", ".join("not detected" if r["delay_parts"] is None else str(r["delay_parts"]) for r in rs)
        first = next((r["alarm"] for r in rs if r["alarm"]), None)
        onset = [f"{r['rep']}: {', '.join(r['drifted_at_onset'])}" for r in rs if r["drifted_at_onset"]]
        note = f" (already drifted at onset, rep {'; '.join(onset)})" if onset else ""
        out.append(f"| {kind} | {delays}{note} | {first[0] if first else '–'} | {first[2] if first else '–'} |")
    return out


def forget_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        cls = sorted(r["regression"])
        out += ["", f"Stain strength {r['strength']}, seed {r['seed']}; regression set: "
                f"{r['good_regression']} good, " + ", ".join(f"{c} {r['regression'][c]}" for c in cls), "",
                "| bundle | " + " | ".join(f"recall {c}" for c in cls) + " | false-reject rate | gate |",
                "|---|" + "---|" * (len(cls) + 2)]
        for name in ("active", "with_history", "naive"):
            b = r[name]
            g = "–" if b["gate"] is None else ("passed" if b["gate"]["passed"] else
                                              "REFUSED: " + "; ".join(b["gate"]["reasons"]))
            out.append(f"| {name} | " + " | ".join(f"{100 * b['recall'][c]:.0f} %" for c in cls)
                       + f" | {100 * b['false_reject_rate']:.1f} % | {g} |")
    return out


# run settings that must agree before runs over different seeds are pooled into one table
SAME_RUN = ("budget", "defect_share", "good_use", "audit", "near_reject", "near_reject_floor", "calibration_folds",
            "size", "bank", "init_good", "init_def", "stream", "accept_side_weight", "reject_side_width",
            "spare_good")


def merge_runs(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run from several ``--json`` files of the same settings over different seeds (``--merge``)."""
    first = docs[0]["args"]
    for d in docs[1:]:
        differ = [k for k in SAME_RUN if d["args"].get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--merge: runs differ in {differ}; they cannot share one table")
    rows = [r for d in docs for r in d.get("active", [])]
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: a seed appears twice ({sorted(seeds)})")
    return {"args": {**first, "seeds": seeds}, "active": rows}


def summarize(paths: Sequence[Path], merge: bool = False) -> None:
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if merge:
        docs = [merge_runs(docs)]
    for doc in docs:  # one table per run: runs differ in budget, stream mix and label use
        active = doc.get("active", [])
        if active:
            args = doc["args"]
            budget = int(args["budget"])
            print("\n".join([f"### Active learning vs random: B = {budget}, stream def_front share "
                             f"{args.get('defect_share', 0.5)}, new good labels: {args.get('good_use', 'fit')}", "",
                             *active_table(active), ""]))
            if "stream" in active[0]:
                print("\n".join(["Near-reject margin, from the first-teach bundles' stream verdicts:", "",
                                 *margin_table(active), ""]))
            full = [r for r in active if sum(r["labelled"]["active"].values()) >= budget]
            if 0 < len(full) < len(active):  # the sink held fewer frames than the budget in the others
                print("\n".join([f"Only seeds where the active arm could spend all {budget} labels:", "",
                                 *active_table(full), ""]))
        if "calib" in doc:
            print("\n".join(["### Calibration of the first-teach bundle", "", *calib_table(doc["calib"]), ""]))
        if "drift" in doc:
            print("\n".join(["### Drift", "", *drift_table(doc["drift"]), ""]))
        if "forget" in doc:
            print("\n".join(["### Forgetting", *forget_table(doc["forget"]), ""]))


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--summarize", type=Path, nargs="+", default=None, help="print tables of these --json files")
    p.add_argument("--merge", action="store_true",
                   help="with --summarize: pool the files (same settings, other seeds) into one table")
    p.add_argument("--only", nargs="*", choices=("active", "calib", "drift", "forget"),
                   default=["active", "drift", "forget"])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs, numbers mean nothing")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=192, help="engine input px")
    p.add_argument("--bank", type=int, default=500, help="memory bank rows")
    p.add_argument("--init-good", type=int, default=50, help="good images of the first teach")
    p.add_argument("--init-def", type=int, default=14, help="def_front images of the first teach")
    p.add_argument("--stream", type=int, default=400, help="parts in the production stream")
    p.add_argument("--budget", type=int, default=40, help="labelling budget per arm")
    p.add_argument("--defect-share", type=float, default=0.5,
                   help="def_front share of the stream (0.5 = the folder's mix; 0.08 = closer to a line)")
    p.add_argument("--good-use", choices=get_args(GoodUse),
                   default="fit_flagged",
                   help="retrain's use of new good labels (datastore.GoodUse; 'fit' = before 2026-11-27)")
    p.add_argument("--audit", type=float, default=0.05, help="publisher audit fraction")
    p.add_argument("--oracle", action="store_true",
                   help="an arm that knows every label and takes the parts the first bundle got most wrong")
    p.add_argument("--accept-side-weight", type=float, default=None,
                   help="SelectionConfig.accept_side_weight of the active arm (default: the product default)")
    p.add_argument("--reject-side-width", type=float, default=None,
                   help="SelectionConfig.reject_side_width_bands of the active arm (default: the product default)")
    p.add_argument("--top", action="store_true",
                   help="an arm that takes the stream parts with the highest anomaly scores (no labels needed)")
    p.add_argument("--rsf", action="store_true",
                   help="an arm labelled as lineguard label --reject-side-first would on the same sink "
                        "(active.REJECT_SIDE_FIRST), beside the active arm's selection")
    p.add_argument("--spare-good", type=int, default=1000,
                   help="train/good images neither taught nor streamed, judged for the line false-reject rate")
    p.add_argument("--near-reject", type=float, default=0.0,
                   help="publisher.near_reject_margin_bands of the stream (0 = no near_reject kind, as before)")
    p.add_argument("--near-reject-floor", type=float, default=0.0,
                   help="publisher.near_reject_min_margin_fraction of the stream (0 = band widths only)")
    p.add_argument("--calibration-folds", type=int, default=0,
                   help="TrainConfig.calibration_folds for every bundle (0 = held-out calibration, as before)")
    p.add_argument("--calib-folds", type=int, nargs="+", default=[5],
                   help="section calib: out-of-fold K values compared with held-out calibration")
    p.add_argument("--drift-train-good", type=int, default=500, help="good images of the drift bundle")
    p.add_argument("--drift-holdout", type=float, default=0.5,
                   help="share of those held out for calibration = the drift reference")
    p.add_argument("--clean-parts", type=int, default=5000, help="undrifted parts for false alarms")
    p.add_argument("--lead-in", type=int, default=300, help="undrifted parts before a drift starts")
    p.add_argument("--max-drift-parts", type=int, default=1000, help="give up detecting after this many parts")
    p.add_argument("--drift-reps", type=int, default=3)
    p.add_argument("--drift-roi", nargs="*", default=[], metavar="X,Y,W,H",
                   help="drift.imaging_roi_px regions in frame pixels (e.g. the four corners of the casting frame)")
    p.add_argument("--drift-kinds", nargs="+", default=["illumination_-20", "illumination_-10", "blur", "noise",
                                                          "geometry", "shift", "defect_parts"])
    p.add_argument("--forget-good", type=int, default=40)
    p.add_argument("--forget-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--forget-strengths", type=float, nargs="+", default=[0.4, 0.1])
    a = p.parse_args(argv)
    if a.smoke:
        a.seeds, a.size, a.bank, a.stream, a.budget, a.spare_good = a.seeds[:1], 64, 64, 40, 8, 50
        a.drift_train_good, a.clean_parts, a.lead_in, a.max_drift_parts, a.drift_reps = 40, 200, 120, 150, 1
        a.drift_kinds, a.forget_good, a.forget_strengths, a.forget_seeds = ["illumination_-20"], 16, [0.4], [0]
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(argv)
    if a.summarize:
        summarize(a.summarize, a.merge)
        return 0
    casting = a.datasets / "casting"
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-data-loop-"))
    results: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}}
    t0 = time.monotonic()
    try:
        if not (casting / "train/good").is_dir():
            log(f"{casting} absent: skipping the casting benchmarks (active, drift)")
        else:
            if "active" in a.only:
                results["active"] = bench_active(casting, work, a)
            if "calib" in a.only:
                results["calib"] = bench_calib(casting, work, a)
            if "drift" in a.only:
                results["drift"] = bench_drift(casting, work, a)
        if "forget" in a.only:
            results["forget"] = [bench_forget(work, a, s, seed) for s in a.forget_strengths for seed in a.forget_seeds]
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = time.monotonic() - t0
    log(f"done in {results['wall_s']:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
