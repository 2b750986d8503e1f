"""Benchmark the fine-tuned classifier as `lineguard train --classifier-finetune` ships it: one view, and
every orientation view only where the single view is unsure (``ClassifierConfig.views_only_when_unsure``).

NEU-DET, the held-out set and training draws of ``scripts/bench_classifier.py`` (``neu_splits``: 100 test
images per class, seeds 0-2), the NEU camera profile (flips and 90-degree turns: 8 views). Per seed the
product's ``train_classifier`` (frozen fit, then fine-tuning with its 3-fold cross-validation, the threshold
chosen out of fold) -> both exported ONNX graphs -> ONNX Runtime on the CPU at 2 threads, each test image
through the single-view graph and, below ``views_below``, the views graph, as the edge's ``BundleRunner``
does. Prints accuracy (one view / as shipped / every view always), the share of parts that needed the
views, the classifier's latency per flagged part (p50 / p90 / p99, both graphs counted) and the training
time; the figures go into docs/classifier.md by hand.

    .venv/bin/python scripts/bench_classifier_views.py --n 40 --json /tmp/views.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classifier import NEU_CLASSES, NEU_PROFILE, load_classes, neu_splits, progress_line
from bench_quality_classifier import append_jsonl

from lineguard.preprocess import prepare, spec_for_images
from lineguard_models.classifier import ClassifierConfig, train_classifier
from lineguard_models.classifier_graph import PROBS_OUTPUT
from lineguard_models.classifier_select import select_and_fit
from lineguard_models.finetune import FinetuneConfig, cascade_probs

TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=40, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--json", type=Path, default=None, help="append one JSON line per seed here")
    p.add_argument("--frozen", action="store_true", help="also the frozen per-line choice on the same images: its "
                   "CV and held-out accuracy, and which of the two the per-line rule (CV, one image) would keep")
    args = p.parse_args(argv)
    root = args.datasets / "neu_det"
    if not root.is_dir():
        print(f"skip: {root} not found")
        return 0
    data = load_classes(root, NEU_CLASSES)
    images = [im for c in NEU_CLASSES for im in data[c]]
    y = np.array([i for i, c in enumerate(NEU_CLASSES) for _ in data[c]], np.int64)
    spec = spec_for_images(images[:5], input_width=224, input_height=224)
    test_idx, orders = neu_splits(y, test_per_class=args.test_per_class, seeds=max(args.seeds) + 1)
    config = ClassifierConfig(finetune=FinetuneConfig(), average_views=True)
    truth = y[test_idx]

    def accuracy(probs: np.ndarray) -> float:
        return float((probs.argmax(1) == truth).mean())

    for seed in args.seeds:
        train = {c: [images[i] for i in orders[seed][k][: args.n]] for k, c in enumerate(NEU_CLASSES)}
        t0 = time.perf_counter()
        clf = train_classifier(train, spec=spec, profile=NEU_PROFILE, seed=seed, config=config)
        train_s = time.perf_counter() - t0
        frozen_row = {}
        if args.frozen:
            t0 = time.perf_counter()
            frozen = train_classifier(train, spec=spec, profile=NEU_PROFILE, seed=seed, selector=select_and_fit)
            cv_f, cv_t = float(frozen.cv_report["accuracy"]), float(clf.cv_report["accuracy"])
            n_train = sum(len(v) for v in train.values())
            frozen_row = {"frozen_choice": frozen.cv_report["selection"]["chosen"], "cv_frozen": cv_f,
                          "cv_finetune": cv_t, "accuracy_frozen": accuracy(frozen.predict_proba([images[i] for i in
                                                                                               test_idx])),
                          "rule_keeps": "finetune" if cv_t >= cv_f + 1.0 / n_train - 1e-9 else "frozen",
                          "frozen_s": round(time.perf_counter() - t0, 1)}
        assert clf.views_below is not None, "views_only_when_unsure is the default"
        with tempfile.TemporaryDirectory() as tmp:
            clf.export_onnx(Path(tmp) / "c.onnx")
            clf.export_views_onnx(Path(tmp) / "v.onnx")
            one, every = _session(Path(tmp) / "c.onnx"), _session(Path(tmp) / "v.onnx")
            p_one, p_every, ms = [], [], []
            for i in test_idx:  # timed as the edge runs it: the views graph only below the threshold
                batch, _ = prepare(images[i], spec)
                t = time.perf_counter()
                p1 = one.run([PROBS_OUTPUT], {"image": batch})[0][0]
                pv = every.run([PROBS_OUTPUT], {"image": batch})[0][0] if p1.max() < clf.views_below else None
                ms.append((time.perf_counter() - t) * 1e3)
                p_one.append(p1)
                p_every.append(pv if pv is not None else every.run([PROBS_OUTPUT], {"image": batch})[0][0])
        one_p, every_p = np.stack(p_one), np.stack(p_every)
        row = {
            "seed": seed, "n": args.n, "frozen_l2": clf.cv_report["l2"],
            "views_below": clf.views_below,
            "views_oof": clf.cv_report["views_only_when_unsure"],
            "accuracy_one_view": accuracy(one_p),
            "accuracy_shipped": accuracy(cascade_probs(one_p, every_p, clf.views_below)),
            "accuracy_every_view": accuracy(every_p),
            "through_views": float((one_p.max(1) < clf.views_below).mean()),
            # the same models at other thresholds: accuracy and share through the views
            "curve": {f"{t:g}": [accuracy(cascade_probs(one_p, every_p, t)), float((one_p.max(1) < t).mean())]
                      for t in TAUS},
            "classifier_ms_p50_p90_p99": [round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)],
            "train_s": round(train_s, 1), **frozen_row,
        }
        progress_line(json.dumps(row))
        append_jsonl(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
