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

Same splits, feature caches and held-out scoring as ``scripts/bench_quality_classifier.py``; one JSON line
per split in ``--out``.

    nice -n 10 .venv/bin/python scripts/bench_classifier_tta.py --sets pku_pcb_defects deeppcb_defects
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality_classifier as bq

from lineguard_models.classifier import ClassifierConfig, fit_head
from lineguard_models.classifier_head import confidence_thresholds, stratified_folds
from lineguard_models.classifier_select import Evaluated, evaluate, feature_columns, pick
from lineguard_models.finetune import cascade_probs, choose_views_below


def _cascade_candidate(ev: Evaluated, cache: bq.Cache, classes: tuple[str, ...], train: npt.NDArray[np.int64],
                       test: npt.NDArray[np.int64], y: npt.NDArray[np.int64], cfg: ClassifierConfig,
                       seed: int) -> dict[str, Any]:
    """The views candidate ``ev`` read through the views where unsure: CV figures and held-out scores."""
    fs = cache.feature_set(ev.candidate, classes, train, y)
    folds = stratified_folds(fs.y, min(cfg.cv_folds, int(np.bincount(fs.y).min())), seed)
    k = len(classes)
    oof_id, oof_all = np.zeros((len(fs.y), k), np.float32), np.zeros((len(fs.y), k), np.float32)
    for f in np.unique(folds):
        rows, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        head = fit_head(*fs.training_rows(rows), k, l2=float(ev.report["l2"]), max_iter=cfg.max_iter)
        oof_id[held] = head.probs(fs.x[held])
        oof_all[held] = replace(fs, average_views=True).probs(head, held)
    tau = choose_views_below(oof_id, oof_all, fs.y)
    oof = cascade_probs(oof_id, oof_all, tau)
    thr = confidence_thresholds(oof, fs.y, classes, quantile=cfg.confidence_quantile, cap=cfg.max_min_confidence)
    assert ev.head is not None
    p_id, p_all = _test_reads(ev, cache, test)
    return {"cv_accuracy": float((oof.argmax(1) == fs.y).mean()),
            "cv_log_loss": float(-np.log(np.clip(oof[np.arange(len(fs.y)), fs.y], 1e-7, 1.0)).mean()),
            "views_below": tau, "through_views_held_out": float((p_id.max(1) < tau).mean()),
            **bq.named_scores(cascade_probs(p_id, p_all, tau), y[test], classes, thr)}


def _test_reads(ev: Evaluated, cache: bq.Cache, test: npt.NDArray[np.int64]
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Held-out probabilities through the identity view, and averaged over all 8 views."""
    assert ev.head is not None
    cols = feature_columns(cache.dims, bq.ALL_STAGES, ev.candidate.stages, have_pooling="mean_gem",
                           want_pooling=ev.candidate.pooling)
    p_id = ev.head.probs(cache.x[test][:, cols])
    views = cache.xv[test][:, :, cols]
    p_all = np.mean([p_id] + [ev.head.probs(views[:, v]) for v in range(views.shape[1])], axis=0)
    return p_id, p_all.astype(np.float32)


def run_set(name: str, seeds: list[int], sizes: list[int], out: Path) -> None:
    images, y, classes, paths = bq.load_set(name)
    cache = bq.Cache(name, images, bq.BASE / "classifier")
    cands, cfg = bq._candidates(), ClassifierConfig()
    plans = [bq.splits(name, y, paths, s, max(40, *sizes)) for s in seeds]  # the suite's splits (sizes 20 and 40)
    need = np.unique(np.concatenate([np.concatenate([*o.values(), t]) for o, t in plans]))
    pool = np.unique(np.concatenate([np.concatenate(list(o.values())) for o, _ in plans]))
    cache.ensure(need, pool)
    cache.ensure_views(need)  # the held-out images' views too: they are read through them here
    for seed, (order, test) in zip(seeds, plans, strict=True):
        for n in sizes if name != "mvtec_bottle" else [min(len(v) for v in order.values())]:
            train = np.concatenate([v[:n] for v in order.values()])
            evs = evaluate(lambda c, idx=train: cache.feature_set(c, classes, idx, y), cands, config=cfg, seed=seed)
            row: dict[str, Any] = {"set": name, "seed": seed, "n": int(n), "shipped": pick(evs).name,
                                   "candidates": {}}
            for ev in evs:
                assert ev.head is not None
                p_id, p_all = _test_reads(ev, cache, test)
                row["candidates"][ev.candidate.name] = {
                    "cv_accuracy": ev.cv_accuracy, "cv_log_loss": ev.cv_log_loss,
                    **bq.named_scores(p_id, y[test], classes, ev.thresholds),
                    "accuracy_all_views": float((p_all.argmax(1) == y[test]).mean())}
                if ev.candidate.views:
                    row["candidates"][f"{ev.candidate.name}_tta"] = _cascade_candidate(
                        ev, cache, classes, train, test, y, cfg, seed)
            # the choice with the cascade readings as candidates: the same rule, the default first
            n_img, base = evs[0].n_images, row["candidates"][evs[0].candidate.name]["cv_accuracy"]
            better = {k: v for k, v in row["candidates"].items() if v["cv_accuracy"] >= base + 1.0 / n_img - 1e-9}
            row["with_tta"] = max(better, key=lambda k: (round(better[k]["cv_accuracy"], 6),
                                                         -better[k]["cv_log_loss"]),
                                  default=evs[0].candidate.name)
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
