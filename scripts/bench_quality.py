"""Cross-dataset quality suite: the product's train -> calibration -> edge score path on every anomaly set.

Data flow per (set, seed, config): ``quality_sets.make_split`` -> a symlink training folder under
``/work/data/quality/folders`` (60 goods: the product fits 50 and holds 10 out; <= 20 defects per
class) -> ``lineguard_models.pipeline.train`` (exactly ``lineguard train``: fit, ONNX export,
calibration on ONNX Runtime scores, bundle) -> the edge's ``BundleRunner`` + ``decide`` on the test
images (exactly ``lineguard score``, ONNX Runtime CPU, 2 threads) -> image AUROC, pixel AUROC (masks),
verdict rates -> one JSON per (arm, config, set, seed) under ``/work/data/quality/results`` (runs
resume and merge) -> ``--doc`` writes ``docs/benchmarks/quality.md`` from the JSON. The comparator arm
(``plain_patchcore.py``) fits the same 50 goods and scores the same test images.

Usage::

    .venv/bin/python scripts/bench_quality.py --arms product,plain --seeds 0,1,2
    .venv/bin/python scripts/bench_quality.py --latency --configs default,s320   # quiet machine
    .venv/bin/python scripts/bench_quality.py --doc
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_sets as q

BASE = Path("/work/data/quality")
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
THREADS = int(os.environ.get("LG_QUALITY_THREADS", "1"))  # accuracy runs; --latency always uses 2
# named recipe settings: TrainConfig overrides (the defaults are "default")
# the recipe before neighbourhood averaging was measured (stop 8: 224 px, stage3 + stage5, 3x3 averaging);
# the settings measured on top of it keep it as their base, so their stored results stay true
STOP8: dict[str, Any] = {"input_size_px": 224, "stages": ("stage3", "stage5"), "neighbourhood_cells": 3}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "stop8": STOP8,
    "avg3": {"neighbourhood_cells": 3},
    "s224": {"input_size_px": 224},
    "l0_288": {"backbone": "efficientnet_lite0"},
    "stage3_320": {"stages": ("stage3",), "input_size_px": 320},
    "previous": {**STOP8, "input_side": "long", "bank_size": 1000, "bank_fraction": None,
                 "stages": ("stage3", "stage4"), "image_score": "map_max"},
    "long224": {**STOP8, "input_side": "long"},
    "s320": {**STOP8, "input_size_px": 320},
    "s384": {**STOP8, "input_size_px": 384},
    "tiles2x2": {**STOP8, "tile_rows": 2, "tile_cols": 2},
    "cs25": {**STOP8, "bank_fraction": 0.25},
    "every_patch": {**STOP8, "bank_fraction": 1.0, "bank_size": 1_000_000},
    "map_max": {**STOP8, "image_score": "map_max"},
    "patch_max": {**STOP8, "image_score": "patch_max"},
    "top3": {**STOP8, "image_score": "topk_mean", "score_top_k": 3},
    "top10": {**STOP8, "image_score": "topk_mean", "score_top_k": 10},
    "stages34": {**STOP8, "stages": ("stage3", "stage4")},
    "lite1": {**STOP8, "backbone": "efficientnet_lite1"},
    "lite2": {**STOP8, "backbone": "efficientnet_lite2"},
    # stop 8's turns4 held 4x the rows (bank_fraction then counted every turned patch; since stop 13 it counts the
    # images' own patches, so 0.4 keeps that bank on square inputs)
    "turns4": {**STOP8, "bank_turns": 4, "bank_fraction": 0.4},
    # stop 13: auto's turns4 candidate on today's default (four turns, the default's bank rows)
    "turns4_rows": {"bank_turns": 4},
    # stop 16: the default without the verdict head (the plain bank score, as before stop 16)
    "nohead": {"verdict_head": {"enabled": False}},
    # stop 16: every good image calibrates out of fold (3 folds, as automatic configuration does), with and
    # without the verdict head (it needs 30 calibrating goods; the held-out arm above has 10)
    "folds3": {"calibration_folds": 3},
    "folds3_nohead": {"calibration_folds": 3, "verdict_head": {"enabled": False}},
    # stop 17: the head forced at weight 4 (no plain candidate), for replaying every weight and selection rule
    # offline against folds3_nohead's bundles (the same banks): scripts/replay_verdict_head.py
    "folds3_w4": {"calibration_folds": 3, "verdict_head": {"weights": (4.0,)}},
}


def train_config(seed: int, name: str) -> Any:
    from lineguard_models.pipeline import TrainConfig

    base = q.split_config(seed).model_dump()
    return TrainConfig.model_validate({**base, "golden_good": 1, "golden_defect": 1, **CONFIGS[name]})


DEFECTS_TAG = ""  # "_d<N>" with --defects-per-class N: the auto arm's folders, bundles and results apart


def _result_path(arm: str, cfg: str, name: str, seed: int) -> Path:
    folder = arm if arm in ("plain", "auto", "auto_rethresholded", "auto_rethresholded_observed") else f"{arm}_{cfg}"
    return BASE / "results" / (folder + DEFECTS_TAG if arm == "auto" else folder) / f"{name}_s{seed}.json"


def _load(sp: q.Split, item: q.Item, mono: bool) -> np.ndarray:
    from lineguard_models.data import load_image

    return load_image(sp.root / item.path, mono_from_rgb=mono)


def _pixel_auroc(sp: q.Split, bundle: Any, mono: bool) -> float | None:
    """Pixel AUROC over the test images when the set has masks (good images count as all-normal),
    from the bundle's own graph through ``prepare`` and ``stitch_map`` (the edge's map), at 1/4 scale."""
    from lineguard.preprocess import prepare, stitch_map
    from lineguard_models.ortscore import cpu_session

    if not any(i.mask for i in sp.test):
        return None
    m = bundle.manifest
    sess = cpu_session(bundle.path(m.engines["anomaly"].file))
    vals, truth = [], []
    for it in sp.test:
        img = _load(sp, it, mono)
        batch, pl = prepare(img, m.input)
        (maps,) = sess.run([m.engines["anomaly"].outputs["map"]], {"image": batch})
        amap = stitch_map(maps.astype(np.float32), pl, img.shape[1], img.shape[0])
        h, w = img.shape[0] // 4, img.shape[1] // 4
        mask = np.zeros((h, w), bool)
        if it.mask:
            mask = cv2.resize(cv2.imread(str(sp.root / it.mask), cv2.IMREAD_GRAYSCALE), (w, h)) > 127
        elif it.label != "good":
            continue  # a defect without a mask cannot say which pixels are wrong
        vals.append(cv2.resize(amap, (w, h), interpolation=cv2.INTER_AREA).ravel())
        truth.append(mask.ravel())
    v, t = np.concatenate(vals), np.concatenate(truth)
    return q.auroc(v[~t], v[t])


def run_product(name: str, seed: int, cfg: str) -> dict[str, Any]:
    """The product arm with a fixed recipe (``CONFIGS[cfg]``): ``lineguard train --no-auto`` + score."""
    from lineguard_models.pipeline import train

    sp = q.make_split(DATASETS, name, seed)
    folder = q.build_folder(sp, BASE / "folders")
    out = BASE / "bundles" / cfg / f"{name}_s{seed}"
    log = (BASE / "logs" / f"train_{cfg}_{name}_s{seed}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        train(folder, out, train_config(seed, cfg), progress=lambda s: print(s, file=f, flush=True), overwrite=True)
    return {"arm": "product", "config": cfg, "train_config": CONFIGS[cfg],
            **score_bundle(sp, out, train_s=time.monotonic() - t0)}


def run_auto(name: str, seed: int) -> dict[str, Any]:
    """The auto arm: ``lineguard train`` in its default automatic mode (``autoconfig.train_auto``,
    the product's own budgets: 600 s, 40 ms engine p50), then scored exactly as the fixed recipes.
    Besides the verdict rates it keeps what auto chose, every candidate's out-of-fold figures and the
    bounds the calibration predicted (Clopper-Pearson upper bounds on escapes per class and on false
    rejects), to hold the observed test rates against them."""
    from lineguard_models.autoconfig import AutoConfig, train_auto

    sp = q.make_split(DATASETS, name, seed)
    folder = q.build_folder(sp, BASE / f"folders{DEFECTS_TAG}")
    out = BASE / "bundles" / f"auto{DEFECTS_TAG}" / f"{name}_s{seed}"
    log = (BASE / "logs" / f"train_auto{DEFECTS_TAG}_{name}_s{seed}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        train_auto(folder, out, train_config(seed, "default"), AutoConfig(),
                   progress=lambda s: print(s, file=f, flush=True), overwrite=True)
    res = score_bundle(sp, out, train_s=time.monotonic() - t0)
    from lineguard.bundle import load_bundle

    cal = load_bundle(out).manifest.calibration
    auto = cal.get("auto", {})
    keep = ("name", "status", "automated_share", "auroc", "engine_p50_ms", "seconds", "predicted_s", "settings",
            "synthetic_share", "synthetic_auroc")
    res.update({
        "arm": "auto", "config": "auto", "chosen": auto.get("chosen"), "reason": auto.get("reason"),
        "search_s": auto.get("search_seconds"), "budget_note": auto.get("budget_note"),
        "candidates": [{k: c.get(k) for k in keep} for c in auto.get("candidates", [])],
        "calibration_automated": cal.get("automated_share"),
        "predicted": {"false_reject_upper": cal.get("good", {}).get("false_reject_upper"),
                      "escape_upper": {c: v.get("escape_upper") for c, v in cal.get("classes", {}).items()},
                      "supported": all(v.get("supported", False) for v in
                                       [cal.get("good", {}), *cal.get("classes", {}).values()])},
    })
    return res


def stored_calibration(bundle: Any) -> tuple[list[float], dict[str, list[float]]]:
    """(good scores, defect scores per class) the bundle calibrated on (``report/scores.csv``)."""
    from lineguard_models.bundle_files import read_scores

    rows = read_scores(bundle)
    defects: dict[str, list[float]] = {}
    for r in rows:
        if r.label != "good":
            defects.setdefault(r.label, []).append(r.score)
    return [r.score for r in rows if r.label == "good"], defects


def test_scores(name: str, seed: int, bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly score, label) of every test image of the split, by ``bundle``'s own engine; cached under
    ``/work/data/quality/testscores`` per bundle (its manifest's sha256), so a rule change replays fast."""
    from lineguard.engines.config import CpuProvider, OrtEngineConfig
    from lineguard.engines.runner import BundleRunner
    from lineguard_models.ortscore import file_sha256

    sp = q.make_split(DATASETS, name, seed)
    cache = BASE / "testscores" / f"{name}_s{seed}.json"
    sha = file_sha256(bundle.root / "manifest.json")
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("bundle_sha256") == sha:
        return np.array([x for _, x in cached["test"]]), np.array([c for c, _ in cached["test"]])
    mono = bool(bundle.manifest.provenance["dataset"]["mono_from_rgb"])
    ort_cfg = OrtEngineConfig(providers=[CpuProvider(type="cpu")], intra_op_threads=THREADS)
    with BundleRunner.from_bundle(bundle, ort_cfg) as runner:
        s = np.array([runner.infer(_load(sp, it, mono)).anomaly_score for it in sp.test])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"set": name, "seed": seed, "bundle_sha256": sha,
                                 "test": [[it.label, float(x)] for it, x in zip(sp.test, s, strict=True)]}))
    return s, np.array([it.label for it in sp.test])


def rethreshold(name: str, seed: int, **policy_updates: Any) -> dict[str, Any]:
    """The auto arm's bundle re-thresholded by the current ``calibrate`` from the calibration scores the
    bundle stores (``report/scores.csv``: what training calibrated on), the test images scored again by
    the bundle's own engine: shows a calibration change without retraining (``lineguard calibrate``
    does the same from new images)."""
    from lineguard.bundle import load_bundle
    from lineguard_models.calibration import CalibrationPolicy, calibrate

    src = json.loads(_result_path("auto", "auto", name, seed).read_text())
    bundle = load_bundle(BASE / "bundles" / "auto" / f"{name}_s{seed}")
    m = bundle.manifest
    good, defects = stored_calibration(bundle)
    policy = CalibrationPolicy.model_validate({**{k: v for k, v in dict(m.thresholds.policy).items() if k != "mode"},
                                               **policy_updates})
    res = calibrate(good, defects, policy)
    s, cls = test_scores(name, seed, bundle)
    y = cls != "good"
    acc, rej = s < res.lower, s >= res.upper
    return {**src, "arm": "auto_rethresholded" + ("_observed" if policy_updates else ""),
            "lower": res.lower, "upper": res.upper,
            "automated": float((acc | rej).mean()), "escape": float(acc[y].mean()),
            "false_reject": float(rej[~y].mean()), "recheck": float((~acc & ~rej).mean()),
            "escape_by_class": {c: float(acc[cls == c].mean()) for c in sorted(set(cls[y]))},
            "calibration_automated": res.automated_share,
            "predicted": {"false_reject_upper": res.good.false_reject_upper,
                          "escape_upper": {c.name: c.escape_upper for c in res.classes},
                          "supported": res.good.supported and all(c.supported for c in res.classes)}}


def score_bundle(sp: q.Split, out: Path, *, train_s: float) -> dict[str, Any]:
    """Score the split's test images with the bundle exactly as ``lineguard score`` does."""
    from lineguard.bundle import load_bundle
    from lineguard.contracts import Frame
    from lineguard.decision import DecisionPolicy, decide
    from lineguard.engines.config import CpuProvider, OrtEngineConfig
    from lineguard.engines.runner import BundleRunner

    name, seed = sp.name, sp.seed
    bundle = load_bundle(out)
    policy = DecisionPolicy.from_manifest(bundle.manifest)
    mono = bool(bundle.manifest.provenance["dataset"]["mono_from_rgb"])
    # accuracy runs share the machine: one thread does not spin-wait for a descheduled sibling
    ort_cfg = OrtEngineConfig(providers=[CpuProvider(type="cpu")], intra_op_threads=THREADS)
    scores, verdicts, labels, anomaly_ms = [], [], [], []
    with BundleRunner.from_bundle(bundle, ort_cfg) as runner:
        runner.warmup()
        for i, it in enumerate(sp.test):
            res = runner.infer(_load(sp, it, mono))
            frame = Frame(seq=i, part_id=i, t_capture_ns=0, image=np.zeros((0, 0), np.uint8), camera_id="q",
                          source_ref=it.path)
            verdicts.append(decide(res, frame, policy, t_decided_ns=0).verdict.label)
            scores.append(res.anomaly_score)
            labels.append(it.label != "good")
            anomaly_ms.append(res.timings_ms["anomaly"])
    s, y, v = np.array(scores), np.array(labels), np.array(verdicts)
    prov = bundle.manifest.provenance
    cls = np.array([it.label for it in sp.test])
    return {
        "set": name, "seed": seed,
        "escape_by_class": {c: float((v[cls == c] == "accept").mean()) for c in sorted(set(cls[y]))},
        "image_auroc": q.auroc(s[~y], s[y]), "pixel_auroc": _pixel_auroc(sp, bundle, mono),
        "n_test_good": int((~y).sum()), "n_test_defect": int(y.sum()),
        "automated": float(np.isin(v, ["accept", "reject"]).mean()),
        "escape": float((v[y] == "accept").mean()), "false_reject": float((v[~y] == "reject").mean()),
        "recheck": float((v == "recheck").mean()),
        "lower": bundle.manifest.thresholds.lower, "upper": bundle.manifest.thresholds.upper,
        "train_s": round(train_s, 1), "bank_rows": prov["bank_rows"],
        "input_wh": [bundle.manifest.input.input_width, bundle.manifest.input.input_height],
        "anomaly_ms_p50_under_load": float(np.median(anomaly_ms)), "loadavg": os.getloadavg()[0],
        # per test image, so other operating points can be replayed on the very same scores
        "test_scores": [round(float(x), 5) for x in s], "test_labels": [str(c) for c in cls],
    }


def run_plain(name: str, seed: int) -> dict[str, Any]:
    from plain_patchcore import PlainPatchCore

    from lineguard_models.data import load_image, scan_dataset

    sp = q.make_split(DATASETS, name, seed)
    folder = q.build_folder(sp, BASE / "folders")
    mono = scan_dataset(folder).mono_from_rgb
    model = PlainPatchCore()
    t0 = time.monotonic()
    model.fit([load_image(p, mono_from_rgb=mono) for p in q.fit_goods(sp, folder, seed)])
    fit_s = time.monotonic() - t0
    s = np.array([model.score(_load(sp, it, mono)) for it in sp.test])
    y = np.array([it.label != "good" for it in sp.test])
    assert model.bank is not None
    return {"arm": "plain", "set": name, "seed": seed, "image_auroc": q.auroc(s[~y], s[y]),
            "bank_rows": int(model.bank.shape[0]), "fit_s": round(fit_s, 1),
            "score_s_per_image": round((time.monotonic() - t0 - fit_s) / len(s), 3)}


def latency(name: str, cfgs: list[str], runs: int = 100) -> list[dict[str, Any]]:
    """Engine p50/p90 of the seed-0 bundles' anomaly engines through the edge runner, 2 threads, the
    configs interleaved frame by frame so a shared machine's load hits them alike (the ratio holds)."""
    from contextlib import ExitStack

    from lineguard.bundle import load_bundle
    from lineguard.engines.config import CpuProvider, OrtEngineConfig
    from lineguard.engines.runner import BundleRunner

    sp = q.make_split(DATASETS, name, 0)
    bundles = [load_bundle(BASE / "bundles" / cfg / f"{name}_s0") for cfg in cfgs]
    mono = bool(bundles[0].manifest.provenance["dataset"]["mono_from_rgb"])
    img = _load(sp, sp.test[0], mono)
    ms: list[list[float]] = [[] for _ in cfgs]
    load0 = os.getloadavg()[0]
    ort_cfg = OrtEngineConfig(providers=[CpuProvider(type="cpu")], intra_op_threads=2)
    with ExitStack() as stack:
        runners = [stack.enter_context(BundleRunner.from_bundle(b, ort_cfg)) for b in bundles]
        for _ in range(20):
            for r in runners:
                r.infer(img)
        for _ in range(runs):
            for i, r in enumerate(runners):
                ms[i].append(r.infer(img).timings_ms["anomaly"])
    load1 = os.getloadavg()[0]
    return [{"set": name, "config": cfg, "p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
             "runs": runs, "interleaved_with": cfgs, "loadavg_before": load0, "loadavg_after": load1,
             "onnx_mb": round(b.path(b.manifest.engines["anomaly"].file).stat().st_size / 1e6, 2),
             "bank_rows": b.manifest.provenance["bank_rows"],
             "input_wh": [b.manifest.input.input_width, b.manifest.input.input_height]}
            for cfg, t, b in zip(cfgs, ms, bundles, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(q.SETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="product,plain")
    ap.add_argument("--configs", default="default")
    ap.add_argument("--latency", action="store_true", help="time the seed-0 bundles instead of running arms")
    ap.add_argument("--doc", action="store_true", help="write docs/benchmarks/quality.md from the JSON")
    ap.add_argument("--defects-per-class", type=int, default=None,
                    help="calibration defects per class for the auto arm (default 20; at most half of a class); "
                    "its folders, bundles and results go to *_d<N>")
    a = ap.parse_args()
    if a.defects_per_class is not None:
        global DEFECTS_TAG
        q.DEFECTS_PER_CLASS, DEFECTS_TAG = a.defects_per_class, f"_d{a.defects_per_class}"
    import torch

    torch.set_num_threads(2 if a.latency else THREADS)
    if a.doc:
        from quality_doc import write_doc

        write_doc(BASE / "results", Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "quality.md")
        return
    if a.latency:
        for name in a.sets.split(","):
            for res in latency(name, a.configs.split(",")):
                path = BASE / "results" / "latency" / f"{name}_{res['config']}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(res, indent=1))
                print(json.dumps(res), flush=True)
        return
    for cfg in a.configs.split(","):
        for seed in map(int, a.seeds.split(",")):  # every set at seed 0 first: a partial run is still a table
            for name in a.sets.split(","):
                for arm in a.arms.split(","):
                    path = _result_path(arm, cfg, name, seed)
                    claim = path.with_suffix(".running")  # several processes can share one list
                    if path.exists() or claim.exists():
                        continue
                    if arm.startswith("auto_rethresholded") and not _result_path("auto", "auto", name, seed).exists():
                        continue  # nothing to re-threshold yet
                    path.parent.mkdir(parents=True, exist_ok=True)
                    claim.write_text(str(os.getpid()))
                    res = (run_product(name, seed, cfg) if arm == "product" else run_auto(name, seed)
                           if arm == "auto" else rethreshold(name, seed) if arm == "auto_rethresholded"
                           else rethreshold(name, seed, escape_tail="observed") if arm == "auto_rethresholded_observed"
                           else run_plain(name, seed))
                    path.write_text(json.dumps(res, indent=1))
                    claim.unlink()
                    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
