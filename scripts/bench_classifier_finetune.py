"""Benchmark fine-tuning the classifier's last backbone stages on NEU-DET (issue 5: >= 99 % at 40/class).

Same held-out set and training draws as ``scripts/bench_classifier.py`` (``neu_splits``). Per
seed: the frozen-feature classifier (the library's ``fit_from_features``, no augmentation copies)
on those splits as the baseline, then ``lineguard_models.finetune.finetune`` started from its head.
Frozen-prefix maps are computed once per image and view and cached under ``--cache`` (the
expensive part on 2 cores); the timing printed per seed is the fine-tuning itself plus the prefix
maps of that seed's training views, i.e. what ``train_classifier(method="finetune")`` adds.
Prints a markdown table row per variant; the numbers go into docs/benchmarks/classifier.md by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classifier import NEU_CLASSES, load_classes, neu_splits, progress_line

from lineguard.preprocess import prepare, spec_for_images
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, FeatureSet, PooledFeatures, fit_from_features
from lineguard_models.finetune import FinetuneConfig, HeadParams, LateStages, Views, finetune, prefix_maps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=40, help="training images per class")
    p.add_argument("--input-px", type=int, default=224)
    p.add_argument("--views", choices=["flips", "dihedral"], default="flips")
    p.add_argument("--first-stage", default="stage6")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr-backbone", type=float, default=3e-4)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--cache", type=Path, default=Path("/tmp/lineguard_ft_cache"))
    args = p.parse_args(argv)
    root = args.datasets / "neu_det"
    if not root.is_dir():
        print(f"skip: {root} not found")
        return 0
    torch.set_num_threads(2)
    cfg = ClassifierConfig()
    ft = FinetuneConfig(first_trained_stage=args.first_stage, epochs=args.epochs, lr_backbone=args.lr_backbone,
                        val_fraction=args.val_fraction)
    data = load_classes(root, NEU_CLASSES)
    images = [im for c in NEU_CLASSES for im in data[c]]
    y = np.array([i for i, c in enumerate(NEU_CLASSES) for _ in data[c]], np.int64)
    spec = spec_for_images(images[:5], input_width=args.input_px, input_height=args.input_px)
    backbone = EfficientNetLite0.from_state_dict_file(out_stages=cfg.stages)
    pooled = PooledFeatures(backbone, max_value=spec.max_value)
    late0 = LateStages(backbone, stages=cfg.stages, first_trained_stage=ft.first_trained_stage)
    views = Views.for_profile(flips=("horizontal", "vertical"), rotate_90=args.views == "dihedral", square=True)
    test_idx, orders = neu_splits(y, test_per_class=100, seeds=max(args.seeds) + 1)
    args.cache.mkdir(parents=True, exist_ok=True)

    def maps_of(idx: np.ndarray, view: str) -> torch.Tensor:
        """Prefix maps of images ``idx`` in ``view``, cached per (image, view, prefix, input size)."""
        files = [args.cache / f"{late0.prefix_stage}_{args.input_px}_{view}_{int(i)}.pt" for i in idx]
        todo = [j for j, f in enumerate(files) if not f.exists()]
        for s in range(0, len(todo), 32):
            part = todo[s : s + 32]
            x = torch.from_numpy(np.concatenate([prepare(images[int(idx[j])], spec)[0] for j in part]))
            x = Views.apply(view, x * pooled.get_buffer("in_scale") + pooled.get_buffer("in_shift"))
            m = prefix_maps(backbone, x, last_block=late0.first_block - 1)
            for j, mj in zip(part, m, strict=True):
                torch.save(mj.clone(), files[j])
        return torch.stack([torch.load(f) for f in files])

    t0 = time.perf_counter()
    test_maps = maps_of(test_idx, "identity")
    progress_line(f"held-out prefix maps: {time.perf_counter() - t0:.0f} s")
    with torch.no_grad():
        test_feats = torch.cat([late0(test_maps[s : s + 64]) for s in range(0, len(test_maps), 64)]).numpy()
    base_acc, ft_acc, times, epochs = [], [], [], []
    for seed in args.seeds:
        train = np.concatenate([orders[seed][c][: args.n] for c in range(len(NEU_CLASSES))])
        t1 = time.perf_counter()
        maps = torch.stack([maps_of(train, v) for v in views.names], dim=1)  # [N, V, C, h, w]
        with torch.no_grad():
            x_train = late0(maps[:, 0]).numpy()
        fs = FeatureSet(classes=NEU_CLASSES, x=x_train, y=y[train], x_aug=np.zeros((0, x_train.shape[1]), np.float32),
                        aug_source=np.zeros(0, np.int64))
        head, _, _ = fit_from_features(fs, config=cfg, seed=seed)
        base = float((head.probs(test_feats).argmax(1) == y[test_idx]).mean())
        def fit(x: np.ndarray, yy: np.ndarray, seed: int = seed) -> HeadParams:
            h, _, _ = fit_from_features(FeatureSet(classes=NEU_CLASSES, x=x, y=yy, x_aug=x[:0], aug_source=yy[:0]),
                                        config=cfg, seed=seed)
            return h.mu, h.sd, h.weight, h.bias

        res = finetune(backbone, maps, y[train], stages=cfg.stages, fit_head=fit, config=ft, seed=seed)
        times.append(time.perf_counter() - t1)
        tuned = LateStages(res.backbone, stages=cfg.stages, first_trained_stage=ft.first_trained_stage)
        with torch.no_grad():
            f = torch.cat([tuned(test_maps[s : s + 64]) for s in range(0, len(test_maps), 64)]).numpy()
        logits = ((f - res.mu) / res.sd) @ res.weight + res.bias
        acc = float((logits.argmax(1) == y[test_idx]).mean())
        base_acc.append(base)
        ft_acc.append(acc)
        epochs.append(res.epochs)
        progress_line(f"seed {seed}: frozen {base * 100:.2f} %, fine-tuned {acc * 100:.2f} % "
                      f"(epochs {res.epochs}, val loss {[round(v, 3) for v in res.val_log_loss]}, "
                      f"{times[-1]:.0f} s incl. uncached prefix maps)")
    b, a = np.array(base_acc) * 100, np.array(ft_acc) * 100
    print(f"| {args.first_stage}.., views {args.views} ({len(views.names)}), lr {args.lr_backbone:g}, "
          f"<= {args.epochs} ep, val {args.val_fraction:g} | seeds {args.seeds} "
          f"| frozen {b.mean():.2f} ± {b.std():.2f} "
          f"| fine-tuned {a.mean():.2f} ± {a.std():.2f} (min {a.min():.2f}) | epochs {epochs} "
          f"| {np.mean(times):.0f} s/seed |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
