"""Fine-tuning as a per-line choice, measured on the classifier suite's sets and splits (issue 16).

Per set (``bench_quality_classifier``'s images at 224x224 and its splits: NEU-DET's fixed 600-image test set,
X-SDD and DeepPCB crops per-seed permutations, mvtec_bottle the quality suite's 10-11 per class) and seed,
the product's own ``train_classifier`` twice on the same training images:

* *frozen*: what ``lineguard train`` ships today (the per-line choice of ``classifier_select``, no camera
  profile declared, so the views candidates are tried);
* *fine-tuned*: the same with the fine-tuning candidate (``classifier_select.consider_finetuning``: 3-fold
  cross-validated fine-tuning of stage6 and the head on every flip and 90-degree turn, the views read only
  where one view is unsure), tried at any class size (``finetune_candidate_min_per_class`` 2; the product
  tries it from 30 per class) and kept whatever its CV says (``force``), so both have held-out figures; the
  row records what the product's rule decided (``beats_frozen``: its out-of-fold accuracy beats the frozen
  choice's on the same folds by one image) and so what the product ships (``product``).

Both read through the graphs' torch modules (the exported ONNX graphs equal them: tests/integration). Prints
per run the cross-validated accuracies the rule compares, held-out accuracy and named right (arg-max right
and not routed to ``unknown``) of both classifiers and of what the product ships, and the training times
(the candidate's estimate beside its measured time).

    nice -n 10 .venv/bin/python scripts/bench_classifier_finetune_suite.py --json /work/data/ft_suite.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality_classifier import DATASETS, PX, append_jsonl, load_set, log, named_scores, splits

from lineguard.preprocess import spec_for_images
from lineguard_models.classifier import ClassifierConfig, TrainedClassifier, train_classifier
from lineguard_models.classifier_select import consider_finetuning, select_and_fit

SETS = ("mvtec_bottle", "deeppcb_defects", "xsdd_steel", "neu_det")


def _held_out(clf: TrainedClassifier, images: list[Any], y: npt.NDArray[np.int64]) -> dict[str, Any]:
    return named_scores(clf.predict_proba(images), y, clf.classes, clf.min_confidence)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=list(SETS))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=20, help="training images per class (mvtec_bottle: its 10-11)")
    p.add_argument("--json", type=Path, default=None, help="append one JSON line per run here")
    args = p.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"skip: {DATASETS} not found (benchmarks need the shared datasets)")
        return 0
    torch.set_num_threads(2)
    for name in args.sets:
        images, y, classes, paths = load_set(name)
        spec = spec_for_images(images[:3], input_width=PX, input_height=PX)
        for seed in args.seeds:
            order, test = splits(name, y, paths, seed, args.n)
            train = {classes[c]: [images[i] for i in idx[: args.n]] for c, idx in order.items()}
            test_images, yt = [images[i] for i in test], y[test]
            stash: dict[str, Any] = {}

            def tuner(*a: Any, stash: dict[str, Any] = stash, **k: Any) -> None:
                """Fine-tune whatever the rule says (force) and keep it aside: the run returns the frozen choice."""
                stash["views"] = a[3]
                stash["out"] = consider_finetuning(*a, **k, force=True)

            t0 = time.perf_counter()
            frozen = train_classifier(train, spec=spec, seed=seed, selector=select_and_fit, tuner=tuner,
                                      config=ClassifierConfig(finetune_candidate_min_per_class=2,
                                                              finetune_candidate_budget_s=86400.0))
            train_s = time.perf_counter() - t0
            (entry,) = [c for c in frozen.cv_report["selection"]["candidates"] if c["name"] == "finetune"]
            held = {"frozen": _held_out(frozen, test_images, yt)}
            if stash.get("out") is not None:
                graph, thr, report, views_below = stash["out"]
                tuned = dataclasses.replace(frozen, graph=graph, min_confidence=thr, cv_report=report,
                                            views=stash["views"], views_below=views_below)
                held["finetuned"] = _held_out(tuned, test_images, yt)
            row = {"set": name, "seed": seed, "n": args.n, "n_train": sum(len(v) for v in train.values()),
                   "frozen_choice": frozen.cv_report["selection"]["chosen"],
                   "cv_frozen": float(frozen.cv_report["accuracy"]), "finetune": entry, **held,
                   "product": held["finetuned"] if entry.get("beats_frozen") else held["frozen"],
                   "train_s": round(train_s, 1)}
            log(json.dumps(row))
            append_jsonl(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
