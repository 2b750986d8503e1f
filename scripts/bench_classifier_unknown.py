"""Unknown routing measured on the classifier suite's splits: the shipped probability floor against feature distances.

Issue 16 (stop 18, not adopted: docs/classifier.md, "Measured at stop 18"). Per set (NEU-DET, X-SDD, DeepPCB crops),
seeds 0-2, 20 labelled per class, the default candidate (stage5+6, ``mean_gem``, 2 photometric copies) on the
suite's cached features (``bench_quality_classifier.Cache``):

- *known -> unknown*: held-out images of the trained classes routed to ``unknown``; *named right*: arg-max right
  and not routed (the suite's classifier-only figure);
- *novel caught*: each class left out of training in turn, the share of its held-out images routed to ``unknown``.

Routings: ``msp<q>`` the shipped rule (max probability below its class's ``min_confidence``, the q quantile of the
out-of-fold correct-class probability); ``knn<q>`` / ``maha<q>`` the distance of a part's standardised features to
the nearest training image / the nearest class centre (Mahalanobis on 32 principal axes, pooled within-class
covariance shrunk 0.2 towards its average variance), above the 1 - q quantile of the training images' out-of-fold
distances.

Usage: ``.venv/bin/python scripts/bench_classifier_unknown.py [sets ...]`` (15-20 min for the three on 2 cores).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality_classifier as b

from lineguard_models.classifier import ClassifierConfig, fit_from_features
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_head import SoftmaxHead, cv_folds

Arr = npt.NDArray[np.float32]
Distance = Callable[[Arr], npt.NDArray[np.float64]]
QUANTILES = (0.05, 0.02)
OUT = b.BASE / "classifier" / "unknown_routing.json"


def _standardiser(x: Arr) -> Callable[[Arr], Arr]:
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    return lambda z: ((z - mu) / sd).astype(np.float32)


def nearest_image(train: Arr) -> Distance:
    def dist(q: Arr) -> npt.NDArray[np.float64]:
        d = ((q[:, None, :].astype(np.float64) - train[None]) ** 2).sum(axis=2)
        return np.sqrt(d.min(axis=1))
    return dist


def nearest_centre(x: Arr, y: npt.NDArray[np.int64], rank: int = 32, shrink: float = 0.2) -> Distance:
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    proj = vt[:rank].T
    z = (x - mu) @ proj
    means = {c: z[y == c].mean(axis=0) for c in np.unique(y)}
    resid = np.concatenate([z[y == c] - m for c, m in means.items()])
    cov = np.cov(resid.T)
    cov = (1 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
    inv = np.linalg.inv(cov)

    def dist(q: Arr) -> npt.NDArray[np.float64]:
        zq = (q - mu) @ proj
        return np.min(np.stack([np.einsum("ij,jk,ik->i", zq - m, inv, zq - m) for m in means.values()], 1), axis=1)
    return dist


def distances(fs: FeatureSet, seed: int) -> tuple[dict[str, Distance], dict[str, npt.NDArray[np.float64]]]:
    """Distance functions fitted on every training row, and the originals' out-of-fold distances."""
    x, y = fs.training_rows(np.arange(len(fs.y)))
    std = _standardiser(x)
    folds = cv_folds(fs.y, 5, seed)
    oof = {"knn": np.zeros(len(fs.y)), "maha": np.zeros(len(fs.y))}
    for f in np.unique(folds):
        xt, yt = fs.training_rows(np.flatnonzero(folds != f))
        held = np.flatnonzero(folds == f)
        s = _standardiser(xt)
        oof["knn"][held] = nearest_image(s(xt))(s(fs.x[held]))
        oof["maha"][held] = nearest_centre(s(xt), yt)(s(fs.x[held]))
    knn, maha = nearest_image(std(x)), nearest_centre(std(x), y)
    return {"knn": lambda q: knn(std(q)), "maha": lambda q: maha(std(q))}, oof


def routed(fs: FeatureSet, heads: dict[float, tuple[SoftmaxHead, dict[str, float]]], seed: int, xq: Arr
           ) -> tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[np.bool_]]]:
    """(arg-max class, routing name -> routed to unknown) for query features ``xq``."""
    fns, oof = distances(fs, seed)
    p = heads[QUANTILES[0]][0].probs(xq)
    pred = p.argmax(axis=1)
    out = {}
    for q in QUANTILES:
        out[f"msp{q}"] = p.max(axis=1) < np.array([heads[q][1][fs.classes[j]] for j in pred])
        for kind, fn in fns.items():
            out[f"{kind}{q}"] = fn(xq) > np.quantile(oof[kind], 1 - q)
    return pred, out


def fitted(fs: FeatureSet, stages: tuple[str, ...], pooling: str, seed: int
           ) -> dict[float, tuple[SoftmaxHead, dict[str, float]]]:
    cfg = ClassifierConfig()
    res = {}
    for q in QUANTILES:
        c = cfg.model_copy(update={"confidence_quantile": q, "stages": stages, "pooling": pooling})
        head, thr, _ = fit_from_features(fs, config=c, seed=seed)
        res[q] = (head, thr)
    return res


def run(name: str, seeds: tuple[int, ...] = (0, 1, 2), n: int = 20) -> dict[str, dict[str, float]]:
    images, y, classes, paths = b.load_set(name)
    cache = b.Cache(name, images, b.BASE / "classifier")
    cand = b._candidates()[0]
    agg: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        order, test = b.splits(name, y, paths, seed, 40)
        train = np.concatenate([v[:n] for v in order.values()])
        fs = cache.feature_set(cand, classes, train, y)
        fst = cache.feature_set(cand, classes, test, y)
        pred, unk = routed(fs, fitted(fs, cand.stages, cand.pooling, seed), seed, fst.x)
        for k, u in unk.items():
            a = agg.setdefault(k, {"known_unknown": [], "named_right": [], "novel_caught": []})
            a["known_unknown"].append(float(u.mean()))
            a["named_right"].append(float(((pred == fst.y) & ~u).mean()))
        for left, sub, rows, relabel in b.left_out(y, classes, order, n):  # each class never trained, in turn
            fs_l = cache.feature_set(cand, sub, rows, relabel)
            xq = cache.feature_set(cand, classes, test[y[test] == left], y).x
            _, unk_l = routed(fs_l, fitted(fs_l, cand.stages, cand.pooling, seed), seed, xq)
            for k, u in unk_l.items():
                agg[k]["novel_caught"].append(float(u.mean()))
    return {k: {m: round(100 * float(np.mean(v)), 2) for m, v in a.items()} for k, a in agg.items()}


def main() -> int:
    sets = sys.argv[1:] or ["neu_det", "xsdd_steel", "deeppcb_defects"]
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in sets:
        res[name] = run(name)
        OUT.write_text(json.dumps(res, indent=1))
        print(name)
        for k, v in res[name].items():
            print(f"  {k:10s} known->unknown {v['known_unknown']:5.1f}  named right {v['named_right']:5.1f}  "
                  f"novel caught {v['novel_caught']:5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
