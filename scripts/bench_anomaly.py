#!/usr/bin/env python3
"""Benchmark of the anomaly model on real datasets: image AUROC, training time, ONNX size, peak
memory, ONNX Runtime CPU latency of the whole engine vs the backbone alone.

Datasets (``../shared/datasets`` next to the repo, or ``--datasets``): ``mvtec_bottle`` (train on
50 or all 209 good images, test on the test split) and ``mpdd_metal_plate`` (40 good images for
training chosen with ``--seed``, the other 40 good + 71 defect images for testing). Skips cleanly
(exit 0) when the datasets folder is absent. Every run executes in a fresh process so its peak
memory (``resource.getrusage``) is its own. Writes a Markdown report (``--out``).

    .venv/bin/python scripts/bench_anomaly.py --out docs/benchmarks/anomaly.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets"


@dataclass(frozen=True)
class Run:
    dataset: str  # "mvtec_bottle" | "mpdd_metal_plate"
    n_train: int
    size_px: int
    bank_size: int
    seed: int


def split(root: Path, run: Run) -> tuple[list[Path], list[Path], list[int]]:
    """(train paths, test paths, test labels 1 = defect) for one run."""
    rng = np.random.default_rng(run.seed)
    if run.dataset == "mvtec_bottle":
        pool = sorted((root / "mvtec_bottle/train/good").glob("*.png"))
        train = [pool[i] for i in sorted(rng.permutation(len(pool))[: run.n_train])]
        test = sorted((root / "mvtec_bottle/test").glob("*/*.png"))
        return train, test, [int(p.parent.name != "good") for p in test]
    good = sorted((root / "mpdd_metal_plate/good").glob("*.png"))
    perm = rng.permutation(len(good))
    train = [good[i] for i in sorted(perm[: run.n_train])]
    test_good = [good[i] for i in sorted(perm[run.n_train :])]
    defects = sorted((root / "mpdd_metal_plate/defect").glob("*.png"))
    return train, test_good + defects, [0] * len(test_good) + [1] * len(defects)


def load(paths: list[Path], size: int) -> np.ndarray:
    """RGB 8-bit images -> [N, 3, size, size] float32 raw units via the shared preprocessing."""
    from lineguard.preprocess import InputSpec, prepare

    spec = InputSpec(channels=3, dtype="uint8", max_value=255, input_width=size, input_height=size)
    out = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read {p}")
        out.append(prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), spec)[0][0])
    return np.stack(out)


def auroc(scores: np.ndarray, labels: list[int]) -> float:
    """Image AUROC as the Mann-Whitney U statistic (ties count half)."""
    from scipy.stats import rankdata

    y = np.asarray(labels, dtype=bool)
    ranks = rankdata(scores)
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def latencies_ms(paths: list[Path], shape: tuple[int, ...], runs: int) -> list[tuple[float, float]]:
    """(p50, p99) per model, batch 1. Runs are interleaved (model A, B, C, A, B, C, ...) so load from
    other processes on a shared machine hits every model alike and the ratios stay fair."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in paths]
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    for sess in sessions:
        for _ in range(5):
            sess.run(None, {"image": x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for sess, bucket in zip(sessions, times, strict=True):
            t0 = time.perf_counter()
            sess.run(None, {"image": x})
            bucket.append((time.perf_counter() - t0) * 1e3)
    return [(float(np.percentile(t, 50)), float(np.percentile(t, 99))) for t in times]


def execute(root: Path, run: Run, latency_runs: int) -> dict[str, float | int | str]:
    """One run in its own process: fit, score the test split, export, time."""
    import torch

    from lineguard_models.anomaly import AnomalyModelConfig, batched, fit_anomaly_model, score_batches
    from lineguard_models.export import export_backbone_only_onnx, export_onnx

    torch.set_num_threads(2)
    train_paths, test_paths, labels = split(root, run)
    x_train = load(train_paths, run.size_px)
    cfg = AnomalyModelConfig(input_height_px=run.size_px, input_width_px=run.size_px,
                             bank_size=run.bank_size, seed=run.seed)
    t0 = time.monotonic()
    scorer = fit_anomaly_model(batched(x_train, cfg.batch_size), config=cfg, channels=3, max_value=255)
    fit_s = time.monotonic() - t0
    del x_train
    scores, _ = score_batches(scorer, batched(load(test_paths, run.size_px), 8))
    shape = (1, 3, run.size_px, run.size_px)
    with tempfile.TemporaryDirectory() as tmp:
        full = export_onnx(scorer, Path(tmp) / "anomaly.onnx")
        bb = export_backbone_only_onnx(scorer, Path(tmp) / "backbone.onnx")
        clf = export_backbone_only_onnx(scorer, Path(tmp) / "classifier.onnx", full_classifier=True)
        onnx_mb = full.stat().st_size / 1e6
        (full_p50, full_p99), (bb_p50, bb_p99), (clf_p50, _) = latencies_ms([full, bb, clf], shape, latency_runs)
    return {
        "dataset": run.dataset, "n_train": run.n_train, "n_test": len(labels), "size": run.size_px,
        "bank": scorer.bank_rows, "dim": int(scorer.bank.shape[1]), "auroc": auroc(scores, labels),
        "fit_s": fit_s, "onnx_mb": onnx_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "p50": full_p50, "p99": full_p99, "bb_p50": bb_p50, "bb_p99": bb_p99, "clf_p50": clf_p50,
    }


def report(rows: list[dict[str, float | int | str]], seed: int) -> str:
    head = (
        "| dataset | train good | test imgs | input px | bank | dim | image AUROC | fit s | ONNX MB | peak RSS MB"
        " | engine p50/p99 ms | backbone p50/p99 ms | engine / backbone | full Lite0 classifier p50 ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['dataset']} | {r['n_train']} | {r['n_test']} | {r['size']} | {r['bank']} | {r['dim']} "
        f"| {r['auroc']:.4f} | {r['fit_s']:.1f} | {r['onnx_mb']:.2f} | {r['peak_rss_mb']:.0f} "
        f"| {r['p50']:.1f} / {r['p99']:.1f} | {r['bb_p50']:.1f} / {r['bb_p99']:.1f} "
        f"| {float(r['p50']) / float(r['bb_p50']):.2f} | {r['clf_p50']:.1f} |"
        for r in rows
    ]
    return (
        f"Machine: {platform.processor() or platform.machine()}, ONNX Runtime CPU, intra_op_num_threads=2, "
        f"batch 1, engine / backbone / classifier runs interleaved; seed {seed} "
        "(training subset of bottle, train/test split of metal plate).\n\n"
        + head + "\n".join(lines) + "\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=Path, default=DEFAULT_DATA, help="folder holding the datasets")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--bank-size", type=int, default=1000, help="memory bank rows")
    ap.add_argument("--seed", type=int, default=0, help="seed for subsets, splits and fitting")
    ap.add_argument("--latency-runs", type=int, default=100, help="timed ONNX Runtime runs per engine")
    ap.add_argument("--quick", action="store_true", help="only bottle/50 and plate/40 at 224 px")
    args = ap.parse_args()
    if not (args.datasets / "mvtec_bottle").is_dir() or not (args.datasets / "mpdd_metal_plate").is_dir():
        print(f"skip: datasets not found under {args.datasets}")
        return 0
    runs = [Run("mvtec_bottle", 50, 224, args.bank_size, args.seed),
            Run("mpdd_metal_plate", 40, 224, args.bank_size, args.seed)]
    if not args.quick:
        runs += [Run("mvtec_bottle", 209, 224, args.bank_size, args.seed),
                 Run("mvtec_bottle", 50, 320, args.bank_size, args.seed),
                 Run("mpdd_metal_plate", 40, 320, args.bank_size, args.seed)]
    rows = []
    ctx = mp.get_context("spawn")
    for run in runs:
        # a fresh process per run: its ru_maxrss is the peak of that run alone
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            row = pool.submit(execute, args.datasets, run, args.latency_runs).result()
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
    text = report(rows, args.seed)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
