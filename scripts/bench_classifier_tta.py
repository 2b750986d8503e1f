"""Views at inference for the frozen classifier (stop 21, issue 16; measured, not adopted).

The per-line choice's ``views`` candidates train the frozen head on the 8 flips and 90-degree turns of every
image (copies in feature space) and read a part through the identity view alone. This bench reads them the
way the fine-tuned classifier is read (``finetune.cascade_probs``): the identity view, and the class
probabilities averaged over every view where its top probability is below ``views_below``, chosen out of
fold by ``finetune.choose_views_below`` on the same folds and L2 as the candidate's own cross-validation;
per-class ``min_confidence`` from those out-of-fold cascade probabilities. Each such reading is one more
candidate (``<name>_tta``) beside the product's candidates, judged by the same rule (``classifier_select.pick``
on CV accuracy), so the table says what the per-line choice would have shipped with it. Also printed: the
held-out accuracy of every candidate read through the average of all 8 views (no cascade).

Stop 22 added two readings of each twin's ``unknown`` floors beside that one (floors from the out-of-fold cascade
probabilities): ``named_right_identity_thr``, the identity view's floors for every part (what the product adopted,
``classifier_select.views_twin``), and ``named_right_split``, the identity view's floors for the parts it reads and
floors from the out-of-fold averaged probabilities for the parts through the views.

Same splits, feature caches and held-out scoring as ``scripts/bench_quality_classifier.py``; one JSON line
per split in ``--out``.

    nice -n 10 .venv/bin/python scripts/bench_classifier_tta.py --sets pku_pcb_defects deeppcb_defects
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality_classifier as bq

from lineguard_models.classifier import ClassifierConfig
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_head import confidence_thresholds, cv_folds
from lineguard_models.classifier_select import Evaluated, evaluate, pick, probs_as_read, views_oof, views_twin
from lineguard_models.finetune import cascade_probs


def _reads(ev: Evaluated, cache: bq.Cache, classes: tuple[str, ...], rows: npt.NDArray[np.int64],
           y: npt.NDArray[np.int64]) -> tuple[FeatureSet, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The candidate's features of ``rows`` with their views, and its head's probabilities through the identity
    view and averaged over all 8 views (``FeatureSet.probs``, as the exported graph averages them)."""
    assert ev.head is not None
    fs = cache.feature_set(replace(ev.candidate, views=True), classes, rows, y)
    every = np.arange(len(rows))
    return fs, fs.probs(ev.head, every), replace(fs, average_views=True).probs(ev.head, every)


def _cascade_twin(ev: Evaluated, cache: bq.Cache, classes: tuple[str, ...], train: npt.NDArray[np.int64],
                  test: npt.NDArray[np.int64], y: npt.NDArray[np.int64], cfg: ClassifierConfig,
                  seed: int) -> tuple[Evaluated, dict[str, Any]]:
    """The views candidate ``ev``'s twin as ``select_and_fit`` adds it (``classifier_select.views_twin``), and its
    held-out scores read as the edge reads it, under three ``unknown`` floor rules: the product's (the identity
    view's, ``named_right_identity_thr``), stop 21's (from the out-of-fold cascade probabilities: the scores'
    ``named_right``) and ``named_right_split`` (the identity view's for the parts it reads, from the out-of-fold
    averaged probabilities for the rest)."""
    fs = cache.feature_set(ev.candidate, classes, train, y)
    twin = views_twin(ev, fs, config=cfg, seed=seed)
    if twin.skipped:
        return twin, {"skipped": twin.skipped}
    tau = float(twin.report["views_only_when_unsure"]["views_below"])
    one, every = views_oof(fs, cv_folds(fs.y, cfg.cv_folds, seed), l2=float(ev.report["l2"]), max_iter=cfg.max_iter)
    floors = functools.partial(confidence_thresholds, y=fs.y, classes=classes, quantile=cfg.confidence_quantile,
                               cap=cfg.max_min_confidence)
    fs_test, p_id, _ = _reads(ev, cache, classes, test, y)
    p = probs_as_read(twin, fs_test, np.arange(len(test)))
    unsure = p_id.max(1) < tau
    return twin, {"cv_accuracy": twin.cv_accuracy, "cv_log_loss": twin.cv_log_loss, "views_below": tau,
                  "through_views_held_out": float(unsure.mean()),
                  **bq.named_scores(p, y[test], classes, floors(cascade_probs(one, every, tau))),
                  "named_right_split": _named_right(p, y[test], classes, unsure, twin.thresholds, floors(every)),
                  "named_right_identity_thr": _named_right(p, y[test], classes, unsure, twin.thresholds,
                                                           twin.thresholds)}


def _named_right(p: npt.NDArray[np.float32], yt: npt.NDArray[np.int64], classes: tuple[str, ...],
                 unsure: npt.NDArray[np.bool_], thr_one: dict[str, float], thr_views: dict[str, float]) -> float:
    """Named right with the identity view's floors for the parts it reads and the views' own for the rest."""
    pred = p.argmax(1)
    floor = np.array([(thr_views if u else thr_one)[classes[j]] for j, u in zip(pred, unsure, strict=True)])
    return float(((pred == yt) & (p.max(1) >= floor)).mean())


def run_set(name: str, seeds: list[int], sizes: list[int], out: Path) -> None:
    cands, cfg = bq._candidates(), ClassifierConfig()
    # the suite's splits (its sizes 20 and 40); the held-out images' views too: they are read through them here
    cache, y, classes, plans = bq.prepare_set(name, seeds, max(40, *sizes), views_of="all")
    for seed, (order, test) in zip(seeds, plans, strict=True):
        for n, train in bq.trainings(name, order, sizes):
            evs = evaluate(lambda c, idx=train: cache.feature_set(c, classes, idx, y), cands, config=cfg, seed=seed)
            row: dict[str, Any] = {"set": name, "seed": seed, "n": n, "shipped": pick(evs).name, "candidates": {}}
            twins = []
            for ev in evs:
                _, p_id, p_all = _reads(ev, cache, classes, test, y)
                row["candidates"][ev.candidate.name] = {
                    "cv_accuracy": ev.cv_accuracy, "cv_log_loss": ev.cv_log_loss,
                    **bq.named_scores(p_id, y[test], classes, ev.thresholds),
                    "accuracy_all_views": float((p_all.argmax(1) == y[test]).mean())}
                if ev.candidate.views:
                    twin, scores = _cascade_twin(ev, cache, classes, train, test, y, cfg, seed)
                    twins.append(twin)
                    row["candidates"][twin.candidate.name] = scores
            row["with_tta"] = pick([*evs, *twins]).name  # the same rule, the default first
            s, w = row["candidates"][row["shipped"]], row["candidates"][row["with_tta"]]
            bq.log(f"{name} seed {seed} n={n}: shipped {row['shipped']} {s['accuracy']:.4f} / {s['named_right']:.4f}"
                   f" | with the cascade candidates {row['with_tta']} {w['accuracy']:.4f} / {w['named_right']:.4f}")
            bq.append_jsonl(out, row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=list(bq.SETS))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="*", default=[20, 40])
    p.add_argument("--out", type=Path, default=bq.BASE.parent / "classifier_tta.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    for name in args.sets:
        if bq.set_root(name).is_dir():
            run_set(name, args.seeds, args.sizes, args.out)
        else:
            print(f"skip {name}: not found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
