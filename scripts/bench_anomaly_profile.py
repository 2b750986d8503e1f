#!/usr/bin/env python3
"""Does extending the anomaly bank with camera-profile variants help a line taught with few good parts?

For ``mvtec_bottle`` and ``mpdd_metal_plate`` (``../shared/datasets`` next to the repo, or
``--datasets``), few good training images (``--n-train``, e.g. 10 and 25), seeds ``--seeds``, and
bank-augmentation conditions (``off``, all kinds combined in every variant, all kinds one per
variant, orientation + illumination, one kind at a time), this fits the anomaly model
through the shipped path (``bank_augment.bank_variants`` -> ``preprocess.prepare`` ->
``fit_anomaly_model``) and measures on held-out images:

* image AUROC (test good vs test defects);
* the calibrated operating point: ``calibration.calibrate`` on 15 held-out good images and half of
  each defect class (default policy), then on the test images the false-reject rate (good >= reject
  threshold), good parts sent to recheck, and escapes (defects below the accept threshold); also the
  false-reject rate at the good-only threshold (a line that has no defect images yet);
* the same on "lighting drift": the test images with a global gain (``--drift``, e.g. 0.85 and 1.15,
  inside the profile's gain range) while the thresholds stay those calibrated on undrifted images.

Test-image features are computed once per dataset and gain (they do not depend on the bank), so
each condition costs one fit plus a nearest-neighbour search. Skips cleanly (exit 0) when the
datasets are absent. ``--resources`` (a separate invocation) measures fit time and peak RSS instead,
one fresh process per fit.

    .venv/bin/python scripts/bench_anomaly_profile.py --jsonl /tmp/ap.jsonl
    .venv/bin/python scripts/bench_anomaly_profile.py --jsonl /tmp/ap.jsonl --resources --n-train 25
    .venv/bin/python scripts/bench_anomaly_profile.py --jsonl /tmp/ap.jsonl --summarize
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets"
# all = every kind in every variant (mode combined); each = every kind, one kind per variant
# (mode one_kind_each); orient+illum = those two, one per variant; a kind name = that kind alone
CONDITIONS = ("off", "all", "each", "orient+illum", "orientation", "illumination", "focus", "noise")
LIGHT = {"gain_range": (0.85, 1.15), "gradient_max_frac": 0.1, "blur_sigma_px_range": (0.0, 0.8),
         "noise_std_max_frac": 0.01, "contrast_range": (0.9, 1.1)}
# What these two cameras can physically produce (docs/benchmarks/anomaly-profile.md says why).
PROFILES: dict[str, dict[str, Any]] = {
    # bottle tops seen from above: round, any rotation about the camera axis; a mirror image of a
    # rotationally symmetric top is another plausible top
    "mvtec_bottle": {"sensor": "colour", "bit_depth": 8, "orientation_specific": False,
                     "flips": ["horizontal", "vertical"], "rotate_90": True, "rotation_max_deg": 15.0, **LIGHT},
    # a plate hanging from a hook swings a little; it is never upside down or mirrored
    "mpdd_metal_plate": {"sensor": "colour", "bit_depth": 8, "orientation_specific": False,
                         "rotation_max_deg": 10.0, **LIGHT},
}


@dataclass(frozen=True)
class Data:
    goods: list[np.ndarray]  # raw RGB uint8
    defects: list[np.ndarray]
    defect_class: list[str]


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def load_data(root: Path, name: str) -> Data:
    if name == "mvtec_bottle":
        good = sorted((root / name / "train/good").glob("*.png")) + sorted((root / name / "test/good").glob("*.png"))
        bad = sorted(p for p in (root / name / "test").glob("*/*.png") if p.parent.name != "good")
    else:
        good = sorted((root / name / "good").glob("*.png"))
        bad = sorted((root / name / "defect").glob("*.png"))
    return Data([read_rgb(p) for p in good], [read_rgb(p) for p in bad], [p.parent.name for p in bad])


def split(data: Data, n_train: int, n_calib: int, seed: int) -> dict[str, list[int]]:
    """Indices: train / calib / test good; calib / test defects (half of each class, seeded)."""
    perm = np.random.default_rng(seed).permutation(len(data.goods))
    out = {"train": sorted(perm[:n_train].tolist()), "calib_good": sorted(perm[n_train : n_train + n_calib].tolist()),
           "test_good": sorted(perm[n_train + n_calib :].tolist()), "calib_bad": [], "test_bad": []}
    for cls in sorted(set(data.defect_class)):
        idx = [i for i, c in enumerate(data.defect_class) if c == cls]
        order = np.random.default_rng([seed, *cls.encode()]).permutation(len(idx))
        half = len(idx) // 2
        out["calib_bad"] += sorted(idx[i] for i in order[:half])
        out["test_bad"] += sorted(idx[i] for i in order[half:])
    return out


def drifted(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float32) * np.float32(gain)), 0, 255).astype(np.uint8)


def spec_for(size: int) -> Any:
    from lineguard.preprocess import InputSpec

    return InputSpec(channels=3, dtype="uint8", max_value=255, input_width=size, input_height=size)


def cache_features(scorer: Any, images: list[np.ndarray], spec: Any, gain: float) -> Any:
    """Patch features [N, D, h, w] of ``images`` after a global gain (1.0 = as captured)."""
    import torch

    from lineguard.preprocess import prepare

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 16):
            chunk = [drifted(im, gain) if gain != 1.0 else im for im in images[i : i + 16]]
            x = np.concatenate([prepare(im, spec)[0] for im in chunk])
            out.append(scorer.features(scorer.normalise(torch.from_numpy(x))))
    return torch.cat(out)


def score_cached(scorer: Any, feats: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        scores = [scorer.score_patches(scorer.distances(feats[i : i + 32]))[0] for i in range(0, len(feats), 32)]
    return torch.cat(scores).numpy().astype(np.float64)


def fit(data: Data, train_idx: list[int], condition: str, seed: int, size: int, bank: int, copies: int,
        dataset: str, backbone: Any) -> tuple[Any, float, int]:
    """Fit through the shipped path; returns (scorer, fit seconds, images fitted)."""
    from lineguard.preprocess import prepare
    from lineguard_models.anomaly import AnomalyModelConfig, batched, fit_anomaly_model
    from lineguard_models.augment import CameraProfile
    from lineguard_models.bank_augment import BANK_KINDS, BankAugmentConfig, bank_variants

    spec = spec_for(size)
    profile = CameraProfile.model_validate(PROFILES[dataset])
    named = {"off": (), "all": BANK_KINDS, "each": BANK_KINDS, "orient+illum": ("orientation", "illumination")}
    kinds = named.get(condition, (condition,))
    aug = BankAugmentConfig(kinds=kinds, copies_per_image=copies if kinds else 0,  # type: ignore[arg-type]
                            mode="combined" if condition == "all" else "one_kind_each")
    counter = [0]

    def inputs() -> Iterator[np.ndarray]:
        for pos, i in enumerate(train_idx):
            for variant in bank_variants(data.goods[i], profile, aug, seed=seed, index=pos):
                counter[0] += 1
                yield prepare(variant, spec)[0]

    cfg = AnomalyModelConfig(input_height_px=size, input_width_px=size, bank_size=bank, seed=seed)
    t0 = time.monotonic()
    scorer = fit_anomaly_model(batched(inputs(), cfg.batch_size), config=cfg, channels=3, max_value=255,
                               backbone=backbone)
    return scorer, time.monotonic() - t0, counter[0]


def operating_point(calib_good: np.ndarray, calib_bad: dict[str, np.ndarray], good: np.ndarray,
                    bad: np.ndarray) -> dict[str, float]:
    from lineguard_models.calibration import auroc, calibrate

    res = calibrate(calib_good, calib_bad)
    return {"auroc": auroc(good, bad), "fr": float(np.mean(good >= res.upper)),
            "recheck": float(np.mean((good >= res.lower) & (good < res.upper))),
            "escape": float(np.mean(bad < res.lower)), "fr_good_only": float(np.mean(good >= res.t_false_reject)),
            "escape_good_only": float(np.mean(bad < res.t_false_reject))}


def run_dataset(args: argparse.Namespace, dataset: str, sink: Any) -> None:
    import torch

    from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
    from lineguard_models.backbone import BackboneConfig, load_backbone

    torch.set_num_threads(args.threads)
    data = load_data(args.datasets, dataset)
    bb = load_backbone(BackboneConfig()).eval()
    spec = ScorerSpec(input_height_px=args.size, input_width_px=args.size, channels=3, max_value=255.0,
                      stages=BackboneConfig().stages, neighbourhood_cells=3, projection_dim=None, projection_seed=0,
                      blur_sigma_px=4.0, image_score="map_max")
    probe = AnomalyScorer(bb, torch.zeros(1, 120), spec).eval()
    images = data.goods + data.defects
    t0 = time.monotonic()
    feats = {g: cache_features(probe, images, spec_for(args.size), g) for g in [1.0, *args.drift]}
    print(f"{dataset}: cached features of {len(images)} images x {len(feats)} gains in {time.monotonic() - t0:.0f} s",
          flush=True)
    n_good = len(data.goods)
    for condition in args.conditions:
        for n_train in args.n_train:
            for seed in args.seeds:
                sp = split(data, n_train, args.calib_good, seed)
                scorer, fit_s, fitted = fit(data, sp["train"], condition, seed, args.size, args.bank_size,
                                            args.copies, dataset, bb)
                row: dict[str, Any] = {"dataset": dataset, "n_train": n_train, "seed": seed, "condition": condition,
                                       "copies": args.copies if condition != "off" else 0, "images_fitted": fitted,
                                       "bank_rows": scorer.bank_rows, "fit_s": round(fit_s, 1),
                                       "n_test_good": len(sp["test_good"]), "n_test_bad": len(sp["test_bad"])}
                base = score_cached(scorer, feats[1.0])
                cg = base[sp["calib_good"]]
                cb: dict[str, list[float]] = {}
                for i in sp["calib_bad"]:
                    cb.setdefault(data.defect_class[i], []).append(float(base[n_good + i]))
                calib_bad = {k: np.asarray(v) for k, v in cb.items()}
                for gain, f in feats.items():
                    s = base if gain == 1.0 else score_cached(scorer, f)
                    good = s[sp["test_good"]]
                    bad = s[[n_good + i for i in sp["test_bad"]]]
                    tag = "" if gain == 1.0 else f"@{gain:g}"
                    row.update({k + tag: v for k, v in operating_point(cg, calib_bad, good, bad).items()})
                row["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                print(json.dumps(row), flush=True)
                sink.write(json.dumps(row) + "\n")
                sink.flush()


def resources_one(root: Path, dataset: str, condition: str, n_train: int, size: int, bank: int, copies: int,
                  threads: int) -> dict[str, Any]:
    """Fresh process: fit time and peak RSS of one fit (no cached test features)."""
    import torch

    from lineguard_models.backbone import BackboneConfig, load_backbone

    torch.set_num_threads(threads)
    data = load_data(root, dataset)
    sp = split(data, n_train, 15, 0)
    bb = load_backbone(BackboneConfig()).eval()
    scorer, fit_s, fitted = fit(data, sp["train"], condition, 0, size, bank, copies, dataset, bb)
    return {"dataset": dataset, "condition": condition, "n_train": n_train, "images_fitted": fitted,
            "bank_rows": scorer.bank_rows, "fit_s": round(fit_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _pct(rows: list[dict[str, Any]], key: str) -> str:
    v = np.array([r[key] for r in rows], np.float64) * 100
    return f"{v.mean():.1f} ± {v.std():.1f}"


def _label(row: dict[str, Any]) -> str:
    """Condition name; a copy count other than the default 4 is named."""
    copies = int(row.get("copies", 4))
    return row["condition"] if copies in (0, 4) else f"{row['condition']} ({copies} copies)"


def summarize(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: mean ± sd over seeds per (dataset, good images, condition)."""
    runs = [r for r in rows if r.get("kind") != "resources"]
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["n_train"], _label(r)), []).append(r)
    order = {c: i for i, c in enumerate(CONDITIONS)}
    keys = sorted(groups, key=lambda k: (k[0], k[1], order[k[2].split(" ")[0]], k[2]))
    out = ["| dataset | good | bank input | seeds | AUROC | FR % | good to recheck % | escapes % "
           "| FR % good-only thr | fit s | images fitted |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        g = groups[k]
        au = np.array([r["auroc"] for r in g])
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | {len(g)} | {au.mean():.4f} ± {au.std():.4f} | {_pct(g, 'fr')} "
                   f"| {_pct(g, 'recheck')} | {_pct(g, 'escape')} | {_pct(g, 'fr_good_only')} "
                   f"| {np.mean([r['fit_s'] for r in g]):.0f} | {g[0]['images_fitted']} |")
    gains = sorted({k.split("@")[1] for r in runs for k in r if k.startswith("fr@")})
    for gain in gains:
        out += ["", f"Lighting drift: test images x {gain}, thresholds from undrifted calibration.", "",
                "| dataset | good | bank input | AUROC | FR % | good to recheck % | escapes % | FR % good-only thr |",
                "|---|---|---|---|---|---|---|---|"]
        for k in keys:
            g = groups[k]
            au = np.array([r[f"auroc@{gain}"] for r in g])
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {au.mean():.4f} ± {au.std():.4f} | {_pct(g, f'fr@{gain}')} "
                       f"| {_pct(g, f'recheck@{gain}')} | {_pct(g, f'escape@{gain}')} "
                       f"| {_pct(g, f'fr_good_only@{gain}')} |")
    res = [r for r in rows if r.get("kind") == "resources"]
    if res:
        out += ["", "| dataset | good | bank input | images fitted | bank rows | fit s | peak RSS MB |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['dataset']} | {r['n_train']} | {_label(r)} | {r['images_fitted']} | {r['bank_rows']} "
                f"| {r['fit_s']} | {r['peak_rss_mb']} |" for r in res]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=Path, default=DEFAULT_DATA, help="folder holding the datasets")
    ap.add_argument("--which", nargs="+", default=["mvtec_bottle", "mpdd_metal_plate"], choices=sorted(PROFILES))
    ap.add_argument("--n-train", type=int, nargs="+", default=[10, 25], help="good training images")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument("--copies", type=int, default=4, help="variants per good training image when on")
    ap.add_argument("--calib-good", type=int, default=15, help="held-out good images for calibration")
    ap.add_argument("--drift", type=float, nargs="*", default=[0.85, 1.15], help="test-image gains (lighting drift)")
    ap.add_argument("--size", type=int, default=224, help="engine input px")
    ap.add_argument("--bank-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jsonl", type=Path, required=True, help="append one JSON row per run here")
    ap.add_argument("--resources", action="store_true",
                    help="instead of the accuracy runs: fit time / peak RSS, one fresh process per fit (a separate "
                    "invocation: Linux hands a parent's peak RSS to a spawned child, so it must not follow the "
                    "runs that cache test features)")
    ap.add_argument("--resource-conditions", nargs="+", default=["off", "illumination"], choices=CONDITIONS)
    ap.add_argument("--summarize", action="store_true", help="only print the tables of the rows in --jsonl")
    args = ap.parse_args()
    if args.summarize:
        rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
        print(summarize(rows))
        return 0
    if not all((args.datasets / d).is_dir() for d in args.which):
        print(f"skip: datasets not found under {args.datasets}")
        return 0
    with args.jsonl.open("a") as sink:
        for dataset in args.which if not args.resources else []:
            run_dataset(args, dataset, sink)
        if args.resources:
            ctx = mp.get_context("spawn")
            for dataset in args.which:
                for condition in args.resource_conditions:
                    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                        row = pool.submit(resources_one, args.datasets, dataset, condition, max(args.n_train),
                                          args.size, args.bank_size, args.copies, args.threads).result()
                    row["kind"] = "resources"
                    print(json.dumps(row), flush=True)
                    sink.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
