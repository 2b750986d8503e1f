"""Benchmark fine-tuning the classifier's last backbone stages on NEU-DET (issue 5: >= 99 % at 40/class).

Same held-out set, training draws and stage-5 map cache as ``scripts/bench_classifier.py``
(``neu_splits``, ``CachedMaps``: the maps of every image in every dihedral view are computed there
once). Per seed: the shipped frozen-feature classifier (``fit_from_features`` with the views as
training copies and probabilities averaged over the views) on those splits as the baseline, then
``lineguard_models.finetune.finetune`` started from a logistic head, evaluated on the held-out set
without and with averaging over the views. The timing printed per seed is the fine-tuning itself
(maps cached), i.e. what fine-tuning would add to ``train_classifier`` on top of the views' maps.
Prints a markdown table row per variant; the numbers go into docs/benchmarks/classifier.md by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classifier import NEU_CLASSES, CachedMaps, load_classes, neu_splits, progress_line

from lineguard.preprocess import spec_for_images
from lineguard_models.classifier import ClassifierConfig, FeatureSet, SoftmaxHead, fit_from_features, fit_head
from lineguard_models.finetune import FinetuneConfig, HeadParams, LateStages, Views, finetune


def _probs(late: LateStages, maps: list[npt.NDArray[np.float32]], head: SoftmaxHead) -> npt.NDArray[np.float32]:
    """Mean over views of the class probabilities of held-out maps (one array per view)."""
    out = []
    with torch.no_grad():
        for m in maps:
            t = torch.from_numpy(np.ascontiguousarray(m))
            out.append(head.probs(torch.cat([late(t[s : s + 128]) for s in range(0, len(t), 128)]).numpy()))
    return np.mean(out, axis=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=40, help="training images per class")
    p.add_argument("--input-px", type=int, default=224)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--views", choices=["flips", "dihedral"], default="dihedral")
    p.add_argument("--first-stage", default="stage6")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr-backbone", type=float, default=1e-4)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--all-views", action="store_true", help="every epoch sees every view (else one random view)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/lineguard_clf_cache"))
    p.add_argument("--baseline", action="store_true", help="also the frozen classifier (CV on all views: slow)")
    args = p.parse_args(argv)
    root = args.datasets / "neu_det"
    if not root.is_dir():
        print(f"skip: {root} not found")
        return 0
    torch.set_num_threads(2)
    cfg = ClassifierConfig()
    ft = FinetuneConfig(first_trained_stage=args.first_stage, epochs=args.epochs, lr_backbone=args.lr_backbone,
                        lr_head=args.lr_head, weight_decay=args.weight_decay, val_fraction=args.val_fraction)
    data = load_classes(root, NEU_CLASSES)
    images = [im for c in NEU_CLASSES for im in data[c]]
    y = np.array([i for i, c in enumerate(NEU_CLASSES) for _ in data[c]], np.int64)
    spec = spec_for_images(images[:5], input_width=args.input_px, input_height=args.input_px)
    cm = CachedMaps(spec=spec, config=cfg, cache=args.cache / f"neu_{args.input_px}")
    views = Views.for_profile(flips=("horizontal", "vertical"), rotate_90=args.views == "dihedral", square=True)
    test_idx, orders = neu_splits(y, test_per_class=args.test_per_class, seeds=max(args.seeds) + 1)
    trains = {s: np.concatenate([orders[s][c][: args.n] for c in range(len(NEU_CLASSES))]) for s in args.seeds}
    needed = np.union1d(test_idx, np.concatenate(list(trains.values())))
    row = {int(g): r for r, g in enumerate(needed)}
    all_maps = {v: cm.maps(v, images, needed, view=v) for v in views.names}
    test_maps = [all_maps[v][[row[int(g)] for g in test_idx]] for v in views.names]
    late0 = LateStages(cm.backbone, stages=cfg.stages, first_trained_stage="stage6")
    rows: dict[str, list[float]] = {"frozen, views + averaging": [], "fine-tuned, identity": [],
                                    "fine-tuned, views averaged": []}
    times = []
    for seed in args.seeds:
        train = trains[seed]
        rows_ = [row[int(g)] for g in train]
        maps = torch.from_numpy(np.stack([all_maps[v][rows_] for v in views.names], axis=1))
        with torch.no_grad():
            feats = torch.stack([late0(maps[:, i]) for i in range(len(views))], dim=1).numpy()
        fs = FeatureSet(classes=NEU_CLASSES, x=feats[:, 0], y=y[train], x_aug=feats[:0, 0],
                        aug_source=np.zeros(0, np.int64), x_views=feats[:, 1:], average_views=True)
        if args.baseline:
            head, _, _ = fit_from_features(fs, config=cfg, seed=seed)
            frozen = _probs(late0, test_maps, head)
            rows["frozen, views + averaging"].append(float((frozen.argmax(1) == y[test_idx]).mean()))

        def fit(x: np.ndarray, yy: np.ndarray) -> HeadParams:
            h = fit_head(x, yy, len(NEU_CLASSES), l2=1e-3, max_iter=cfg.max_iter)  # the start; CV would cost minutes
            return h.mu, h.sd, h.weight, h.bias

        t1 = time.perf_counter()
        train_maps, train_y = maps, y[train]
        if args.all_views:  # [N * V, 1, ...]: an epoch is every view of every image
            train_maps = maps.reshape(-1, 1, *maps.shape[2:])
            train_y = np.repeat(y[train], len(views))
        res = finetune(cm.backbone, train_maps, train_y, stages=cfg.stages, fit_head=fit, config=ft, seed=seed)
        times.append(time.perf_counter() - t1)
        tuned = LateStages(res.backbone, stages=cfg.stages, first_trained_stage=ft.first_trained_stage)
        tuned_head = SoftmaxHead(mu=res.mu, sd=res.sd, weight=res.weight, bias=res.bias)
        rows["fine-tuned, identity"].append(
            float((_probs(tuned, test_maps[:1], tuned_head).argmax(1) == y[test_idx]).mean()))
        rows["fine-tuned, views averaged"].append(
            float((_probs(tuned, test_maps, tuned_head).argmax(1) == y[test_idx]).mean()))
        progress_line(f"seed {seed}: " + ", ".join(f"{k} {v[-1] * 100:.2f}" for k, v in rows.items() if v)
                      + f" (epochs {res.epochs}, {times[-1]:.0f} s)")
    cells = " | ".join(f"{k} {np.mean(v) * 100:.2f} ± {np.std(v) * 100:.2f}" for k, v in rows.items() if v)
    print(f"| {args.first_stage}.., {len(views)} views{' all/epoch' if args.all_views else ''}, "
          f"lr {args.lr_backbone:g}/{args.lr_head:g}, wd {args.weight_decay:g}, {args.epochs} ep "
          f"| seeds {args.seeds} | {cells} | {np.mean(times):.0f} s/seed |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
