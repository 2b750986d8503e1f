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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
from data_loop_common import DEFAULT_DATA, EXTRA_ARMS, QUIET, Image, copy_into, load_casting, log, pixel_key
from data_loop_drift import bench_drift
from data_loop_tables import summarize
from scipy.stats import rankdata

from lineguard.bundle import Bundle, load_bundle
from lineguard.decision import band_width
from lineguard.imageio import read_image
from lineguard.sink.labels import LabelBook
from lineguard.wire import MessageKind
from lineguard_models.active import REJECT_SIDE_FIRST, SelectionConfig, plan_shift
from lineguard_models.backtest import Judge, collect_stream
from lineguard_models.datastore import DatasetStore, GoodUse
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.retrain import GateConfig, evaluate, gate, retrain
from lineguard_models.synth import SynthConfig, write_dataset

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
