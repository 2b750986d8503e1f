"""Benchmark fine-tuning the classifier's last backbone stage on NEU-DET (issue 5: >= 99 % at 40/class).

Same held-out set, training draws and stage-5 map cache as ``scripts/bench_classifier.py``
(``neu_splits``, ``CachedMaps``: the maps of every image in every dihedral view are computed there
once). Settings are chosen without the test set: per seed, the images of the 200-per-class training
pool that the seed does not train on are the **validation** set (160/class at 40/class); every
setting reports validation and test accuracy, read through the identity view only and with the
class probabilities averaged over the 8 views (what the exported graph does with
``average_views``). The run itself is ``lineguard_models.finetune.finetune`` on every view of every
training image (an epoch sees each view as its own map), started from a logistic head on the
frozen features, exactly as ``train_classifier`` runs it with ``ClassifierConfig.finetune``
(there the head's L2 comes from the frozen fit's cross-validation; here it is 1e-3).
``--frozen`` adds the shipped frozen classifier (8 views as training copies) on the same splits.
The time printed per run is the fine-tuning itself (maps cached). Prints one line per setting; the
numbers go into docs/benchmarks/classifier.md by hand.

    .venv/bin/python scripts/bench_classifier_finetune.py --n 40 --settings 1:1e-4 2:1e-4 4:1e-4 --frozen
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classifier import NEU_CLASSES, CachedMaps, load_classes, neu_splits, progress_line

from lineguard.preprocess import spec_for_images
from lineguard_models.classifier import ClassifierConfig, fit_from_features, fit_head
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.finetune import (
    FinetuneConfig,
    HeadParams,
    LateStages,
    Views,
    cascade_probs,
    finetune,
    view_averaged_probs,
)


def _accuracies(late: LateStages, head: HeadParams, maps: dict[str, npt.NDArray[np.float32]],
                y: npt.NDArray[np.int64], subsets: dict[str, tuple[str, ...]], rows: dict[str, npt.NDArray[np.int64]],
                ) -> dict[str, float]:
    """Accuracy per split, read through each named subset of views (probabilities averaged over it)."""
    out = {}
    for split, idx in rows.items():
        for label, names in subsets.items():
            stacked = torch.from_numpy(np.stack([maps[v][idx] for v in names], axis=1))
            out[f"{split}_{label}"] = float((view_averaged_probs(late, head, stacked).argmax(1) == y[idx]).mean())
    return out


def _cascade(late: LateStages, head: HeadParams, maps: dict[str, npt.NDArray[np.float32]],
             y: npt.NDArray[np.int64], names: tuple[str, ...], rows: dict[str, npt.NDArray[np.int64]],
             taus: list[float]) -> dict[str, float]:
    """Views only where needed: the identity view's answer where its top probability is at least tau,
    else the average over every view. Accuracy and the share of parts that needed the views, per tau."""
    out = {}
    for split, idx in rows.items():
        stacked = torch.from_numpy(np.stack([maps[v][idx] for v in names], axis=1))
        p1 = view_averaged_probs(late, head, stacked[:, :1])
        p_all = view_averaged_probs(late, head, stacked)
        for tau in taus:
            out[f"{split}_cascade{tau:g}"] = float((cascade_probs(p1, p_all, tau).argmax(1) == y[idx]).mean())
            out[f"{split}_escalated{tau:g}"] = float((p1.max(1) < tau).mean())
    return out


def _line(name: str, res: dict[str, list[float]]) -> str:
    return f"{name}: " + " | ".join(f"{k} {np.mean(v) * 100:.2f} ± {np.std(v) * 100:.2f}" for k, v in res.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=40, help="training images per class")
    p.add_argument("--input-px", type=int, default=224)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--settings", nargs="*", default=["4:1e-4"], metavar="EPOCHS:LR_BACKBONE",
                   help="fine-tuning settings to compare (head learning rate 1e-3, stage6 trained)")
    p.add_argument("--frozen", action="store_true", help="also the shipped frozen classifier on the same splits")
    p.add_argument("--cache", type=Path, default=Path("/tmp/lineguard_clf_cache"))
    p.add_argument("--json", type=Path, default=None, help="append one JSON line per setting here")
    p.add_argument("--cascade", type=float, nargs="*", default=[], metavar="TAU",
                   help="also read the fine-tuned models through the identity view alone where its top class "
                        "probability is at least TAU, and through every view only below it")
    p.add_argument("--eval-views", nargs="*", default=[], metavar="VIEW+VIEW",
                   help="also read the models through these view subsets, e.g. identity+rot180 (the cost of "
                        "a flagged part grows with the number of views)")
    args = p.parse_args(argv)
    root = args.datasets / "neu_det"
    if not root.is_dir():
        print(f"skip: {root} not found")
        return 0
    torch.set_num_threads(2)
    cfg = ClassifierConfig()
    data = load_classes(root, NEU_CLASSES)
    images = [im for c in NEU_CLASSES for im in data[c]]
    y = np.array([i for i, c in enumerate(NEU_CLASSES) for _ in data[c]], np.int64)
    spec = spec_for_images(images[:5], input_width=args.input_px, input_height=args.input_px)
    cm = CachedMaps(spec=spec, config=cfg, cache=args.cache / f"neu_{args.input_px}")
    views = Views.for_profile(flips=("horizontal", "vertical"), rotate_90=True, square=True)
    test_idx, orders = neu_splits(y, test_per_class=args.test_per_class, seeds=max(args.seeds) + 1)
    pool = np.setdiff1d(np.arange(len(y)), test_idx)
    everything = np.arange(len(y))
    maps = {v: cm.maps(v, images, everything, view=v) for v in views.names}  # row = image index
    subsets = {"identity": ("identity",), "averaged": views.names}
    subsets |= {v.replace("+", "_"): tuple(v.split("+")) for v in args.eval_views}
    late0 = LateStages(cm.backbone, stages=cfg.stages, first_trained_stage="stage6")
    splits = {s: np.concatenate([orders[s][c][: args.n] for c in range(len(NEU_CLASSES))]) for s in args.seeds}

    def rows(seed: int) -> dict[str, npt.NDArray[np.int64]]:
        return {"val": np.setdiff1d(pool, splits[seed]), "test": test_idx}

    def report(name: str, res: dict[str, list[float]], extra: dict[str, object]) -> None:
        print(_line(name, res), flush=True)
        if args.json:
            with args.json.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"setting": name, "n": args.n, "seeds": args.seeds, **extra, **res}) + "\n")

    if args.frozen:
        res: dict[str, list[float]] = {}
        for seed in args.seeds:
            train = splits[seed]
            with torch.no_grad():
                feats = np.stack([late0(torch.from_numpy(np.ascontiguousarray(maps[v][train]))).numpy()
                                  for v in views.names], axis=1)
            fs = FeatureSet(classes=NEU_CLASSES, x=feats[:, 0], y=y[train], x_aug=feats[:0, 0],
                            aug_source=np.zeros(0, np.int64), x_views=feats[:, 1:], average_views=False)
            head, _, _ = fit_from_features(fs, config=cfg, seed=seed)
            for k, v in _accuracies(late0, (head.mu, head.sd, head.weight, head.bias), maps, y, subsets,
                                    rows(seed)).items():
                res.setdefault(k, []).append(v)
            progress_line(f"frozen seed {seed}: " + ", ".join(f"{k} {v[-1] * 100:.2f}" for k, v in res.items()))
        report(f"frozen stage5+6, 8 views as training copies, n={args.n}", res, {})

    for setting in args.settings:
        epochs, lr = setting.split(":")
        ft = FinetuneConfig(epochs=int(epochs), lr_backbone=float(lr))
        res, times = {}, []
        for seed in args.seeds:
            train = splits[seed]
            stacked = torch.from_numpy(np.stack([maps[v][train] for v in views.names], axis=1))

            def fit(x: npt.NDArray[np.float32], yy: npt.NDArray[np.int64]) -> HeadParams:
                h = fit_head(x, yy, len(NEU_CLASSES), l2=1e-3, max_iter=cfg.max_iter)
                return h.mu, h.sd, h.weight, h.bias

            t0 = time.perf_counter()
            r = finetune(cm.backbone, stacked.reshape(-1, 1, *stacked.shape[2:]), np.repeat(y[train], len(views)),
                         stages=cfg.stages, fit_head=fit, config=ft, seed=seed)
            times.append(time.perf_counter() - t0)
            tuned = LateStages(r.backbone, stages=cfg.stages, first_trained_stage=ft.first_trained_stage)
            for k, v in _accuracies(tuned, (r.mu, r.sd, r.weight, r.bias), maps, y, subsets, rows(seed)).items():
                res.setdefault(k, []).append(v)
            if args.cascade:
                for k, v in _cascade(tuned, (r.mu, r.sd, r.weight, r.bias), maps, y, views.names, rows(seed),
                                     args.cascade).items():
                    res.setdefault(k, []).append(v)
            progress_line(f"{setting} seed {seed}: " + ", ".join(f"{k} {v[-1] * 100:.2f}" for k, v in res.items())
                          + f" ({times[-1]:.0f} s)")
        report(f"fine-tuned stage6, {setting} (epochs:lr), 8 views, n={args.n}, {np.mean(times):.0f} s/run",
               res, {"epochs": int(epochs), "lr_backbone": float(lr), "seconds": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
