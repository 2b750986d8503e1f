"""Averaging the per-line candidates' heads instead of picking one (issue 16), on the classifier suite's splits.

Same features, splits and candidates as ``scripts/bench_quality_classifier.py`` (its ``Cache`` under
``/work/data/quality/classifier``). Per set, seed and images per class: every candidate cross-validated by the
library (``classifier_select.evaluate``), its out-of-fold probabilities at its chosen L2 recomputed on the
same folds, and held-out probabilities of its final head. Rows printed (held-out accuracy / named right, %):

* *pick*: what ``lineguard train`` ships (``classifier_select.pick``);
* *mean_all*: the class probabilities averaged over every candidate (one backbone pass to the union of their
  stages, several linear heads), ``min_confidence`` from the averaged out-of-fold probabilities;
* *pick+mean*: ``pick`` with *mean_all* as one more candidate judged by the same rule (its CV accuracy from the
  averaged out-of-fold probabilities; the folds are the same for every candidate).

    nice -n 10 .venv/bin/python scripts/bench_classifier_ensemble.py --json /work/data/ensemble.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality_classifier import (
    BASE,
    DATASETS,
    _candidates,
    append_jsonl,
    log,
    named_scores,
    prepare_set,
    trainings,
)

from lineguard_models.classifier import ClassifierConfig, out_of_fold_probs
from lineguard_models.classifier_head import confidence_thresholds, cv_folds
from lineguard_models.classifier_select import evaluate, pick

SETS = ("mvtec_bottle", "deeppcb_defects", "xsdd_steel", "neu_det")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=list(SETS))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="*", default=[20, 40])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"skip: {DATASETS} not found (benchmarks need the shared datasets)")
        return 0
    torch.set_num_threads(2)
    cache_dir = BASE / "classifier"
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = ClassifierConfig()
    candidates = _candidates()
    for name in args.sets:
        cache, y, classes, plans = prepare_set(name, args.seeds, max(args.sizes), cache_dir=cache_dir)
        for seed, (order, test) in zip(args.seeds, plans, strict=True):
            for n, train in trainings(name, order, args.sizes):
                evs = evaluate(lambda c, idx=train, cc=cache, k=classes, yy=y: cc.feature_set(c, k, idx, yy),
                               candidates, config=config, seed=seed)
                yt, ytr = y[test], y[train]
                folds = cv_folds(ytr, config.cv_folds, seed)
                oof, hold = {}, {}
                for ev in evs:
                    fs = cache.feature_set(ev.candidate, classes, train, y)
                    oof[ev.candidate.name] = out_of_fold_probs(fs, folds, l2=float(ev.report["l2"]),
                                                               max_iter=config.max_iter)
                    assert ev.head is not None
                    fs_test = cache.feature_set(ev.candidate, classes, test, y)
                    hold[ev.candidate.name] = fs_test.probs(ev.head, np.arange(len(test)))
                rows: dict[str, Any] = {}
                for ev in evs:
                    rows[ev.candidate.name] = {"cv": ev.cv_accuracy,
                                               **named_scores(hold[ev.candidate.name], yt, classes, ev.thresholds)}
                chosen = pick(evs).name
                mean_oof = np.mean(list(oof.values()), axis=0)
                mean_hold = np.mean(list(hold.values()), axis=0)
                t = confidence_thresholds(mean_oof, ytr, classes, quantile=config.confidence_quantile,
                                          cap=config.max_min_confidence)
                cv_mean = float((mean_oof.argmax(1) == ytr).mean())
                rows["mean_all"] = {"cv": cv_mean, **named_scores(mean_hold, yt, classes, t)}
                default_cv = evs[0].cv_accuracy
                beats = cv_mean >= default_cv + 1.0 / len(ytr) - 1e-9 and cv_mean > rows[chosen]["cv"] + 1e-9
                out = {"set": name, "seed": seed, "n": int(n), "pick": chosen, "pick_row": rows[chosen],
                       "mean_all": rows["mean_all"], "pick_plus_mean": "mean_all" if beats else chosen,
                       "candidates": rows}
                log(f"{name} s{seed} n={n}: pick {chosen} {rows[chosen]['accuracy']:.4f}/"
                    f"{rows[chosen]['named_right']:.4f} | mean_all {rows['mean_all']['accuracy']:.4f}/"
                    f"{rows['mean_all']['named_right']:.4f} (cv {cv_mean:.4f} vs pick {rows[chosen]['cv']:.4f})")
                append_jsonl(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
