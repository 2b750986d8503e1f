"""A defect type never trained, read by the views twins (stop 22, issue 16): still routed to ``unknown``?

The per-line choice's views twins (``classifier_select.views_twin``) read the parts one view is unsure of through
the 8 views averaged, with the identity view's ``min_confidence`` floors. Averaged probabilities are flatter, so
a part of a type never trained might land below the floors more often, or, where the views agree on a wrong
class, less often. Per set and seed (the classifier suite's splits and caches, 20 labelled per class), each class
is left out of training in turn; the views candidate and its twin are trained on the others (the library's
``evaluate`` and ``views_twin``) and read the left-out class's held-out images as the edge would
(``probs_as_read``): *novel caught* is the share routed to ``unknown``. Beside it, trained on every class: known
defects routed to ``unknown`` and named right. One JSON line per set in ``--out``.

    nice -n 10 .venv/bin/python scripts/bench_classifier_twin_novel.py --sets neu_det deeppcb_defects
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality_classifier as bq

from lineguard_models.classifier import ClassifierConfig
from lineguard_models.classifier_select import Evaluated, evaluate, probs_as_read, views_twin

N = 20


def _unknown(ev: Evaluated, p: npt.NDArray[np.float32], classes: tuple[str, ...]) -> npt.NDArray[np.bool_]:
    return p.max(1) < np.array([ev.thresholds[classes[j]] for j in p.argmax(1)])


def _pair(cache: bq.Cache, classes: tuple[str, ...], rows: npt.NDArray[np.int64], y: npt.NDArray[np.int64],
          seed: int) -> list[Evaluated]:
    """The views candidate (the line's stages, copies, every view) and its twin, trained on ``rows``."""
    cand = next(c for c in bq._candidates() if c.name == "views")
    cfg = ClassifierConfig()
    fs = cache.feature_set(cand, classes, rows, y)
    (ev,) = evaluate(lambda _c: fs, [cand], config=cfg, seed=seed)
    return [ev, views_twin(ev, fs, config=cfg, seed=seed)]


def run_set(name: str, seeds: list[int]) -> dict[str, Any]:
    cache, y, classes, plans = bq.prepare_set(name, seeds, 40, views_of="all")
    agg: dict[str, dict[str, list[float]]] = {"views": {}, "views_tta": {}}
    for seed, (order, test) in zip(seeds, plans, strict=True):
        train = np.concatenate([v[:N] for v in order.values()])
        for ev in _pair(cache, classes, train, y, seed):
            if ev.skipped:
                continue
            fs_t = cache.feature_set(ev.candidate, classes, test, y)
            p = probs_as_read(ev, fs_t, np.arange(len(test)))
            unk = _unknown(ev, p, classes)
            a = agg[ev.candidate.name]
            a.setdefault("known_unknown", []).append(float(unk.mean()))
            a.setdefault("named_right", []).append(float(((p.argmax(1) == y[test]) & ~unk).mean()))
        for left, sub, rows, relabel in bq.left_out(y, classes, order, N):  # each class never trained, in turn
            novel = test[y[test] == left]
            for ev in _pair(cache, sub, rows, relabel, seed):
                if ev.skipped:
                    continue
                fs_n = cache.feature_set(ev.candidate, sub, novel, relabel)
                p = probs_as_read(ev, fs_n, np.arange(len(novel)))
                agg[ev.candidate.name].setdefault("novel_caught", []).append(float(_unknown(ev, p, sub).mean()))
        bq.log(f"{name} seed {seed}: " + "; ".join(
            f"{k} " + ", ".join(f"{m} {100 * np.mean(v):.1f}" for m, v in a.items()) for k, a in agg.items()))
    return {"set": name, **{k: {m: round(100 * float(np.mean(v)), 2) for m, v in a.items()} for k, a in agg.items()},
            "runs": {k: {m: len(v) for m, v in a.items()} for k, a in agg.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=["neu_det", "xsdd_steel", "deeppcb_defects", "pku_pcb_defects"])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=bq.BASE.parent / "classifier_twin_novel.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    for name in args.sets:
        if not bq.set_root(name).is_dir():
            print(f"skip {name}: not found")
            continue
        row = run_set(name, args.seeds)
        print(json.dumps(row))
        bq.append_jsonl(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
