"""Calibration benchmark: do the bounds the report predicts hold on images calibration never saw?

For each shared dataset: fit the anomaly model on good training images, export ONNX, score every
other image with ONNX Runtime (the edge path), then repeat many random splits of those scores into
a calibration part (20 defect images per class, half the non-training good images) and a test
part (the rest). Each split is calibrated with the default policy; the script prints the observed
escape and false-reject rates on the test part next to the rates and one-sided 95 % upper bounds
the calibration predicted. Skips cleanly when ../shared/datasets is absent.

    .venv/bin/python scripts/bench_calibration.py [--datasets mvtec_bottle mpdd_metal_plate] [--splits 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lineguard_models.anomaly import AnomalyModelConfig, batched, fit_anomaly_model
from lineguard_models.calibration import CalibrationPolicy, calibrate
from lineguard_models.data import scan_dataset
from lineguard_models.export import export_onnx
from lineguard_models.ortscore import OrtScorer, iter_batches
from lineguard_models.pipeline import TrainConfig, make_input_spec, split_good

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETTINGS = {  # dataset -> (good images for fitting, input long side px)
    "mvtec_bottle": (50, 224),
    "mpdd_metal_plate": (40, 224),
}


def score_dataset(name: str, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    ds = scan_dataset(SHARED / name)
    n_good, size = SETTINGS[name]
    pool = ds.good("train") or ds.good("")
    cfg = TrainConfig(seed=seed, input_size_px=size, max_good=n_good,
                      holdout_fraction=max(0.05, 1 - n_good / len(pool)) if len(pool) > n_good else 0.2)
    train, calib_good = split_good(ds, cfg)
    spec = make_input_spec(ds, train, cfg)
    t0 = time.monotonic()
    model = fit_anomaly_model(batched(iter_batches(ds, train, spec), 8), channels=spec.channels,
                              max_value=spec.max_value, config=AnomalyModelConfig(
                                  input_width_px=spec.input_width, input_height_px=spec.input_height, seed=seed))
    fit_s = time.monotonic() - t0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "a.onnx")
        scorer = OrtScorer(onnx_path, spec)
        good = np.array([scorer.score(ds.load(s)) for s in calib_good])
        defects = {c: np.array([scorer.score(ds.load(s)) for s in ds.defects(c)]) for c in ds.defect_classes}
    info = {"train_good": len(train), "fit_s": round(fit_s, 1), "input": f"{spec.input_width}x{spec.input_height}"}
    return good, defects, info


def run_splits(good: np.ndarray, defects: dict[str, np.ndarray], splits: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    pol = CalibrationPolicy()
    acc: dict[str, list[float]] = {k: [] for k in (
        "fr_cal", "fr_ub", "fr_test", "esc_cal", "esc_ub", "esc_test", "rechk_good", "rechk_def", "n_test_def")}
    for _ in range(splits):
        g = rng.permutation(good)
        g_cal, g_test = g[: len(g) // 2], g[len(g) // 2:]
        d_cal, d_test = {}, []
        for c, s in defects.items():
            p = rng.permutation(s)
            d_cal[c], d_test = p[:20], [*d_test, *p[20:]]
        r = calibrate(g_cal, d_cal, pol)
        dt = np.array(d_test)
        acc["fr_cal"].append(r.good.false_reject_rate)
        acc["fr_ub"].append(r.good.false_reject_upper)
        acc["fr_test"].append(float(np.mean(g_test >= r.upper)))
        acc["esc_cal"].append(max(c.escape_rate for c in r.classes))
        acc["esc_ub"].append(max(c.escape_upper for c in r.classes))
        acc["esc_test"].append(float(np.mean(dt < r.lower)) if dt.size else float("nan"))
        acc["rechk_good"].append(float(np.mean((g_test >= r.lower) & (g_test < r.upper))))
        acc["rechk_def"].append(float(np.mean((dt >= r.lower) & (dt < r.upper))) if dt.size else float("nan"))
        acc["n_test_def"].append(float(dt.size))
    return {k: float(np.nanmean(v)) for k, v in acc.items()} | {
        "fr_test_within_ub": float(np.mean(np.array(acc["fr_test"]) <= np.array(acc["fr_ub"]))),
        "esc_test_within_ub": float(np.nanmean(np.array(acc["esc_test"]) <= np.array(acc["esc_ub"]))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(SETTINGS))
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} not present")
        return 0
    for name in args.datasets:
        if not (SHARED / name).is_dir():
            print(f"{name}: skipped (not present)")
            continue
        good, defects, info = score_dataset(name, args.seed)
        res = run_splits(good, defects, args.splits, args.seed)
        counts = {c: len(s) for c, s in defects.items()}
        print(f"\n## {name}  {info}  scored good (non-training) {len(good)}, defects {counts}")
        print(f"splits {args.splits}: calibration = 20 defects/class + {len(good) // 2} good; "
              f"test = rest ({res['n_test_def']:.1f} defects, {len(good) - len(good) // 2} good per split)")
        print("| rate | on calibration images | predicted 95 % upper bound | observed on test images | "
              "splits with observed <= bound |")
        print("|---|---|---|---|---|")
        print(f"| false reject | {res['fr_cal']:.3%} | {res['fr_ub']:.2%} | {res['fr_test']:.2%} | "
              f"{res['fr_test_within_ub']:.0%} |")
        print(f"| escape (worst class / pooled test) | {res['esc_cal']:.3%} | {res['esc_ub']:.2%} | "
              f"{res['esc_test']:.2%} | {res['esc_test_within_ub']:.0%} |")
        print(f"| recheck good / defect (test) | | | {res['rechk_good']:.1%} / {res['rechk_def']:.1%} | |")
        aur = {c: round(float(np.mean(s[:, None] > good[None, :]) + 0.5 * np.mean(s[:, None] == good[None, :])), 4)
               for c, s in defects.items()}
        print(f"AUROC per class (all scored images): {aur}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
