"""Benchmark the few-shot defect classifier; writes docs/benchmarks/classifier.md.

One command reproduces every table of that file (``python scripts/bench_classifier.py``), on the
real datasets under ``--datasets`` (skips cleanly when absent):

* ``neu_det`` (6 classes, mono): held-out accuracy with 20 / 40 / 80 training images per class,
  mean and spread over seeds, for the plain logistic probe on pooled 1280-d head features and for
  the shipped classifier (``ClassifierConfig()`` defaults with the NEU camera profile below:
  multi-scale pooled features, the profile's orientation views as training copies, photometric
  copies, CV-chosen L2), the option of averaging the views in the exported graph, and the
  augmentation ablation on the same splits: none vs the physically plausible profile vs harmful
  kinds forced on (perspective, colour jitter, JPEG). ``--rows`` picks rows, ``--sizes`` sizes.
* ``mvtec_bottle``: the three defect classes, out-of-fold recall per class from
  ``train_classifier``'s own cross-validation (shipped defaults).
* ONNX Runtime CPU latency of the exported classifier with 1, 4 and 8 averaged views
  (intra_op_num_threads=2, batch 1), and of the backbone prefix an anomaly engine on stage3/stage4
  already computes (what a shared pass could save).

Speed: stage-5 maps of every image in every view (and of the augmented copies) are computed once
and cached as .npy under ``--cache``; the frozen stage6-7 blocks turn them into the classifier's
features, and every split then runs the library's own head fitting, cross-validation, view
averaging and threshold code (``FeatureSet``, ``fit_from_features``). A rerun with a warm cache
takes minutes. The harmful augmentations live here on purpose: no camera profile and no CLI can
reach them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from lineguard.imageio import is_grey_rgb, list_images, read_image
from lineguard.preprocess import InputSpec, prepare, spec_for_images
from lineguard_models.augment import CameraProfile, augment
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import (
    ClassifierConfig,
    PooledFeatures,
    fit_from_features,
    fit_head,
    train_classifier,
)
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.finetune import LateStages, prefix_maps
from lineguard_models.views import IDENTITY, VIEW_OPS, Views

Image = npt.NDArray[Any]
NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
BOTTLE_CLASSES = ("broken_large", "broken_small", "contamination")

# NEU-DET: hot-rolled strip seen from above. The data set itself holds scratches and rolled-in
# scale running both along and across the image axes (the strip passes either way round and the
# crops are stored in both orientations), so flips and 90-degree turns are views the data already
# contains: defects are not orientation-specific here.
NEU_PROFILE = CameraProfile(
    sensor="mono", bit_depth=8, orientation_specific=False, flips=("horizontal", "vertical"), rotate_90=True,
    gain_range=(0.85, 1.15), gradient_max_frac=0.1, blur_sigma_px_range=(0.0, 0.8),
    noise_std_max_frac=0.01, contrast_range=(0.9, 1.1), copies_per_image=1,
)
# bottle tops from above: round parts in any orientation, lamp colour may drift a little
BOTTLE_PROFILE = CameraProfile(
    sensor="colour", bit_depth=8, orientation_specific=False, flips=("horizontal", "vertical"),
    rotate_90=True, rotation_max_deg=10.0, gain_range=(0.9, 1.1), white_balance_max_frac=0.03,
    blur_sigma_px_range=(0.0, 0.8), noise_std_max_frac=0.01, copies_per_image=2,
)


# ------------------------------------------------------------- harmful kinds (ablation only)


def harmful(image: Image, rng: np.random.Generator) -> Image:
    """Perspective warp, colour jitter and JPEG artefacts: what a generic vision recipe does.

    On a mono image "colour jitter" can only be its brightness/contrast part (torchvision's
    ColorJitter(0.4, 0.4, 0.4, 0.1) on a grey image), far beyond the camera's range.
    """
    h, w = image.shape[:2]
    d = 0.15 * min(h, w)
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = src + rng.uniform(-d, d, src.shape).astype(np.float32)
    x = cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h),
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.6, 1.4) + x.mean() * rng.uniform(0.6, 1.4)
    if image.ndim == 3:
        hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18)) % 180  # hue +/- 0.1 turn
        hsv[..., 1] *= rng.uniform(0.6, 1.4)
        x = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    x8 = np.clip(x, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", x8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 60))])
    assert ok
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(out).astype(image.dtype)


# ------------------------------------------------------------------------------ data + features


def load_classes(root: Path, classes: Sequence[str]) -> dict[str, list[Image]]:
    out = {}
    for c in classes:
        ims = [read_image(p) for p in list_images(root / c)]
        out[c] = [np.ascontiguousarray(im[..., 0]) if is_grey_rgb(im) else im for im in ims]
    return out


def progress_line(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(values: Sequence[float]) -> str:
    a = np.array(values) * 100
    return f"{a.mean():.2f} ± {a.std():.2f}"


def neu_splits(
    y: npt.NDArray[np.int64], *, test_per_class: int, seeds: int
) -> tuple[npt.NDArray[np.int64], list[dict[int, npt.NDArray[np.int64]]]]:
    """(fixed held-out indices, per seed: class -> training pool order); train = order[c][:n].

    Shared with ``scripts/bench_classifier_finetune.py`` so every method sees the same splits.
    """
    split_rng = np.random.default_rng(1234)  # one fixed held-out set; seeds vary the training draw
    test, pool = [], []
    for c in range(len(NEU_CLASSES)):
        idx = split_rng.permutation(np.flatnonzero(y == c))
        test += idx[:test_per_class].tolist()
        pool += idx[test_per_class:].tolist()
    test_idx, pool_idx = np.array(test), np.array(pool)
    orders = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        orders.append({c: rng.permutation(pool_idx[y[pool_idx] == c]) for c in range(len(NEU_CLASSES))})
    return test_idx, orders


class CachedMaps:
    """Stage-5 maps per (image set, view), cached on disk; features and probe features from them.

    Maps are what the expensive part of the backbone (stem .. stage5) produces; the frozen stage6-7
    blocks turn them into the classifier's GAP features in seconds. The same cache feeds
    ``scripts/bench_classifier_finetune.py``-style experiments.
    """

    def __init__(self, *, spec: InputSpec, config: ClassifierConfig, cache: Path) -> None:
        self.spec, self.cache = spec, cache
        cache.mkdir(parents=True, exist_ok=True)
        # the probe needs EfficientNet's own head after stage7, whatever stages the classifier pools
        stages = tuple(dict.fromkeys((*config.stages, "stage7")))
        self.backbone = EfficientNetLite0.from_state_dict_file(out_stages=stages)
        self.pooled = PooledFeatures(self.backbone, max_value=spec.max_value)
        self.late = LateStages(self.backbone, stages=config.stages, first_trained_stage="stage6")
        self.probe_late = LateStages(self.backbone, stages=("stage7",), first_trained_stage="stage6")
        self.late_dim = sum(self.backbone.stage_channels[s] for s in config.stages)

    def maps(
        self, name: str, images: Sequence[Image], indices: npt.NDArray[np.int64], view: str = "identity",
    ) -> npt.NDArray[np.float32]:
        """Stage-5 maps [len(indices), C, h, w] of ``images[indices]`` in ``view``.

        Cached as ``<name>.npy`` (rows) + ``<name>.idx.npy`` (which image each row is); only images
        not cached yet are computed, so a run with more sizes or seeds extends the cache.
        """
        path, idx_path = self.cache / f"{name}.npy", self.cache / f"{name}.idx.npy"
        have = np.load(idx_path) if idx_path.exists() else np.zeros(0, np.int64)
        maps = np.load(path) if path.exists() else None
        todo = np.setdiff1d(indices, have)
        if len(todo):
            t0, out = time.perf_counter(), []
            scale, shift = self.pooled.get_buffer("in_scale"), self.pooled.get_buffer("in_shift")
            for s in range(0, len(todo), 32):
                x = torch.from_numpy(np.concatenate([prepare(images[i], self.spec)[0] for i in todo[s : s + 32]]))
                x = Views.apply(view, x * scale + shift)
                out.append(prefix_maps(self.backbone, x, last_block=self.late.first_block - 1).numpy())
            new = np.concatenate(out)
            maps = new if maps is None else np.concatenate([maps, new])
            have = np.concatenate([have, todo])
            np.save(path, maps)
            np.save(idx_path, have)  # after the maps: a crash in between leaves rows without an index
            progress_line(f"{name}: stage-5 maps of {len(todo)} images in {time.perf_counter() - t0:.0f} s")
        assert maps is not None
        row = {int(g): r for r, g in enumerate(have)}
        return np.asarray(maps[[row[int(g)] for g in indices]])

    def features(self, maps: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            m = torch.from_numpy(maps)
            return torch.cat([self.late(m[s : s + 128]) for s in range(0, len(m), 128)]).numpy()

    def probe_features(self, maps: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """EfficientNet's own pre-logit features: stage6-7, head conv + BN + ReLU6 + GAP."""
        b, out = self.backbone, []
        with torch.inference_mode():
            for s in range(0, len(maps), 128):
                x = torch.from_numpy(maps[s : s + 128])
                for block in self.probe_late.blocks:
                    x = block(x)
                out.append(F.relu6(b._bn1(b._conv_head(x))).mean(dim=(2, 3)))
        return torch.cat(out).numpy()


class _Augmented(Sequence[Image]):
    """Lazy augmented copies: item ``i * k + j`` is copy j of image i, from its own generator."""

    def __init__(self, images: Sequence[Image], fn: Callable[[Image, np.random.Generator], Image], k: int) -> None:
        self.images, self.fn, self.k = images, fn, k

    def __len__(self) -> int:
        return len(self.images) * self.k

    def __getitem__(self, i: Any) -> Any:
        # one generator per copy: the cached copy does not depend on which others were computed with it
        return self.fn(self.images[int(i) // self.k], np.random.default_rng([7, int(i)]))


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One row of the NEU table: which views train, which copies are added, whether views are averaged."""

    key: str  # for --rows
    name: str
    views: Views
    copies: str | None  # "plausible" | "harmful" | None
    average_views: bool


def neu_variants(config: ClassifierConfig, spec: InputSpec) -> list[Variant]:
    """The ablation rows; ``shipped`` follows ``config`` (the library defaults) and ``NEU_PROFILE``."""
    views = Views.for_camera(NEU_PROFILE, spec) if config.orientation_views else IDENTITY
    copies = "plausible" if NEU_PROFILE.copies_per_image > 0 else None
    avg = config.average_views
    shipped = ", ".join(([f"{len(views)} views as training copies"] if len(views) > 1 else [])
                        + (["photometric copies"] if copies else []) + (["views averaged"] if avg else []))
    return [
        Variant("none", "augmentation none (no copies, no views)", IDENTITY, None, False),
        Variant("copies", "plausible photometric copies only (previous default)", IDENTITY, "plausible", False),
        Variant("shipped", f"**shipped: augmentation plausible** ({shipped})", views, copies, avg),
        Variant("tta" if not avg else "no-tta", f"shipped {'+' if not avg else 'without'} views averaged in the graph",
                views, copies, not avg),
        Variant("harmful", "augmentation harmful (shipped + perspective/jitter/JPEG copies)", views, "harmful", avg),
    ]


def _copy_rows(
    copies: dict[str, npt.NDArray[np.float32]], kind: str | None, train: npt.NDArray[np.int64], k: int, dim: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    if kind is None:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    rows = np.array([int(g) * k + j for g in train for j in range(k)])
    return copies[kind][rows], np.repeat(np.arange(len(train)), k)


def neu_bench(root: Path, *, seeds: int, sizes: Sequence[int], input_px: int, config: ClassifierConfig,
              test_per_class: int, cache: Path, rows_wanted: Sequence[str] | None = None) -> dict[str, Any]:
    data = load_classes(root, NEU_CLASSES)
    images = [im for c in NEU_CLASSES for im in data[c]]
    y = np.array([i for i, c in enumerate(NEU_CLASSES) for _ in data[c]], np.int64)
    spec = spec_for_images(images[:5], input_width=input_px, input_height=input_px)
    cm = CachedMaps(spec=spec, config=config, cache=cache / f"neu_{input_px}")
    test_idx, orders = neu_splits(y, test_per_class=test_per_class, seeds=seeds)
    # only the images some split trains on (their copies too) or tests on are ever computed
    pool = np.unique(np.concatenate([o[c][: max(sizes)] for o in orders for c in o]))
    needed = np.union1d(test_idx, pool)
    feats, probe = {}, np.zeros((len(y), 1280), np.float32)  # rows of images never needed stay zero
    for v in VIEW_OPS:  # every view: training copies and test-time averaging
        maps = cm.maps(v, images, needed, view=v)
        feats[v] = np.zeros((len(y), cm.late_dim), np.float32)
        feats[v][needed] = cm.features(maps)
        if v == "identity":
            probe[needed] = cm.probe_features(maps)
        del maps
    k = max(1, NEU_PROFILE.copies_per_image)
    copy_fns: dict[str, Callable[[Image, np.random.Generator], Image]] = {
        "plausible": lambda im, r: augment(im, NEU_PROFILE, r), "harmful": harmful}
    copies = {}
    for kind, fn in copy_fns.items():
        # copy j of image i comes from its own generator: the cache does not depend on which
        # other images were computed with it
        rows = np.array([i * k + j for i in pool for j in range(k)])
        copies[kind] = np.zeros((len(y) * k, cm.late_dim), np.float32)
        copies[kind][rows] = cm.features(cm.maps(f"{kind}_x{k}", _Augmented(images, fn, k), rows))
    variants_ = [v for v in neu_variants(config, spec) if rows_wanted is None or v.key in rows_wanted]
    results: dict[str, dict[int, list[float]]] = {}
    unknown: dict[int, list[float]] = {}
    for seed, order in enumerate(orders):
        for n in sizes:
            train = np.concatenate([order[c][:n] for c in range(len(NEU_CLASSES))])
            head = fit_head(probe[train], y[train], len(NEU_CLASSES), l2=1e-3, max_iter=config.max_iter)
            results.setdefault("probe (head features, no aug)", {}).setdefault(n, []).append(
                float((head.probs(probe[test_idx]).argmax(1) == y[test_idx]).mean()))
            for var in variants_:
                def rows(idx: npt.NDArray[np.int64], var: Variant = var) -> npt.NDArray[np.float32] | None:
                    return np.stack([feats[v][idx] for v in var.views.names[1:]], 1) if len(var.views) > 1 else None
                x_aug, src = _copy_rows(copies, var.copies, train, k, feats["identity"].shape[1])
                fs = FeatureSet(classes=NEU_CLASSES, x=feats["identity"][train], y=y[train], x_aug=x_aug,
                                aug_source=src, x_views=rows(train), average_views=var.average_views)
                clf, thr, _ = fit_from_features(fs, config=config, seed=seed)
                held = dataclasses.replace(fs, x=feats["identity"][test_idx], y=y[test_idx], x_views=rows(test_idx))
                p = held.probs(clf, np.arange(len(test_idx)))
                results.setdefault(var.name, {}).setdefault(n, []).append(float((p.argmax(1) == y[test_idx]).mean()))
                if var.key == "shipped":
                    below = p.max(1) < np.array([thr[NEU_CLASSES[j]] for j in p.argmax(1)])
                    unknown.setdefault(n, []).append(float(below.mean()))
            progress_line(f"neu seed {seed} n={n}: " + ", ".join(
                f"{m[:24]}={v[n][-1] * 100:.2f}" for m, v in results.items()))
    return {"results": results, "unknown": unknown, "test_images": len(test_idx), "spec": spec}


def bottle_bench(root: Path, *, seeds: int, input_px: int, config: ClassifierConfig) -> dict[str, Any]:
    data = load_classes(root / "test", BOTTLE_CLASSES)
    images = [im for c in BOTTLE_CLASSES for im in data[c]]
    spec = spec_for_images(images, input_width=input_px, input_height=input_px)
    reports = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        clf = train_classifier(data, spec=spec, profile=BOTTLE_PROFILE, seed=seed, config=config)
        reports.append(clf.cv_report)
        progress_line(f"bottle seed {seed}: CV accuracy {clf.cv_report['accuracy']:.3f} "
                      f"({time.perf_counter() - t0:.0f} s)")
    return {"reports": reports, "counts": {c: len(v) for c, v in data.items()}, "min_confidence": clf.min_confidence}


# ---------------------------------------------------------------------------------- latency


class _Prefix(torch.nn.Module):
    """Backbone up to stage4: the part an anomaly engine on stage3/stage4 computes anyway."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        from lineguard_models.backbone import EfficientNetLite0

        self.backbone = EfficientNetLite0.from_state_dict_file(out_stages=("stage4",))
        self.scale = 1.0 / spec.max_value

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # same input handling as the engines: /max_value, mono broadcast to 3 channels (ImageNet
        # mean/std left out: one multiply-add more or less does not move a latency number)
        return self.backbone((image * self.scale).expand(-1, 3, -1, -1))["stage4"]


def ort_latency_ms(path: Path, shape: tuple[int, ...], runs: int) -> tuple[float, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(5):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def latency_bench(neu_root: Path, spec: InputSpec, config: ClassifierConfig, out_dir: Path) -> dict[str, Any]:
    data = load_classes(neu_root, NEU_CLASSES)
    small = {c: v[:10] for c, v in data.items()}  # latency does not depend on the training set size
    clf = train_classifier(small, spec=spec, profile=NEU_PROFILE.model_copy(update={"copies_per_image": 0}),
                           config=config.model_copy(update={"l2_grid": (1e-3,), "orientation_views": False}))
    shape = (1, spec.channels, spec.input_height, spec.input_width)
    res = {}
    for views in (IDENTITY, Views.for_profile(flips=("horizontal", "vertical"), rotate_90=False, square=True),
                  Views.for_camera(NEU_PROFILE, spec)):
        path = out_dir / f"classifier_{len(views)}.onnx"
        dataclasses.replace(clf, views=views).export_onnx(path)
        res[f"classifier, {len(views)} view{'s' if len(views) > 1 else ''} averaged"] = ort_latency_ms(path, shape, 100)
    prefix = out_dir / "prefix.onnx"
    with torch.no_grad():
        torch.onnx.export(_Prefix(spec).eval(), (torch.full(shape, 128.0),), str(prefix), input_names=["image"],
                          output_names=["stage4"], opset_version=17, dynamo=False)
    res["backbone up to stage4"] = ort_latency_ms(prefix, shape, 100)
    return res


# ----------------------------------------------------------------------------------- report


def render(neu: dict[str, Any] | None, bottle: dict[str, Any] | None, lat: dict[str, Any] | None,
           args: argparse.Namespace, elapsed_s: float) -> str:
    lines = ["# Few-shot defect classifier benchmark", "",
             f"Measured by `scripts/bench_classifier.py` on this development machine ({torch.get_num_threads()} "
             f"torch threads, CPU only), input {args.input_px}x{args.input_px}, {args.seeds} seeds; whole run "
             f"{elapsed_s / 60:.1f} min. Mean ± std over seeds, in %.", ""]
    if neu is not None:
        sizes = sorted(next(iter(neu["results"].values())))
        lines += ["## NEU-DET (6 classes, mono 200x200): held-out accuracy", "",
                  f"Held-out set: {neu['test_images']} images ({args.test_per_class} per class, fixed); each seed "
                  "draws the training images from the other images of each class. Camera profile "
                  "(`NEU_PROFILE` in the script): flips and 90-degree turns allowed (the data set holds "
                  "scratches in both axes), gain 0.85-1.15, gradient 10 %, focus blur sigma <= 0.8 px, noise "
                  "<= 1 %, contrast 0.9-1.1, 1 photometric copy per image. *Views* = the 8 dihedral views "
                  "as training copies in feature space; *averaging* = the exported graph averages the class "
                  "probabilities over the same 8 views. The *augmentation none / plausible / harmful* rows "
                  "are the ablation on the same splits (harmful = perspective warp + colour jitter "
                  "(brightness/contrast on mono) + JPEG q20-60 copies forced on top of the shipped method).", "",
                  "| method | " + " | ".join(f"{n}/class" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for name, by_n in neu["results"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(by_n[n]) for n in sizes) + " |")
        lines += ["", "Held-out images of known classes that the shipped classifier "
                  "would report as `unknown` (max probability below the class's `min_confidence`): "
                  + ", ".join(f"{n}/class {fmt(neu['unknown'][n])}" for n in sizes) + ".", ""]
    if bottle is not None:
        reps = bottle["reports"]
        lines += ["## MVTec AD bottle: the three defect classes", "",
                  "All defect images there are (" + ", ".join(f"{c} {n}" for c, n in bottle["counts"].items())
                  + "); out-of-fold results of `train_classifier`'s own stratified cross-validation "
                  "(camera profile: flips, 90-degree steps, +/-10 degree rotation, mild light/focus/noise).", "",
                  "| class | images | out-of-fold recall | min_confidence (seed 0..) |", "|---|---|---|---|"]
        for c, n in bottle["counts"].items():
            rec = [r["per_class"][c]["recall"] for r in reps]
            thr = ", ".join(f"{r['per_class'][c]['min_confidence']:.2f}" for r in reps)
            lines.append(f"| {c} | {n} | {fmt(rec)} | {thr} |")
        lines += [f"| **all** | {sum(bottle['counts'].values())} | {fmt([r['accuracy'] for r in reps])} | |", ""]
    if lat is not None:
        lines += ["## Latency (ONNX Runtime CPU, intra_op_num_threads=2, batch 1)", "",
                  "| graph | median ms | p95 ms |", "|---|---|---|"]
        for name, (med, p95) in lat.items():
            lines.append(f"| {name} | {med:.1f} | {p95:.1f} |")
        lines += ["", "*N views averaged*: the exported graph runs the N orientation views of the one input "
                  "image as a batch of N and averages their class probabilities (4 = flips, 8 = flips and "
                  "90-degree turns). *backbone up to stage4* is the part an anomaly engine on stage3/stage4 "
                  "computes anyway: the most a shared backbone pass could save per part and view.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/classifier.md"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 80])
    p.add_argument("--input-px", type=int, default=224)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--skip", nargs="*", default=[], choices=["neu", "bottle", "latency"])
    p.add_argument("--cache", type=Path, default=Path("/tmp/lineguard_clf_cache"),
                   help="stage-5 maps of every NEU-DET image and view (about 1.6 GB at 224 px)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--rows", nargs="*", default=None, help="NEU rows to run (keys: none copies shipped tta "
                   "no-tta harmful; default all); the probe always runs")
    args = p.parse_args(argv)
    if not args.datasets.is_dir():
        print(f"skip: {args.datasets} not found (benchmarks need the shared datasets)")
        return 0
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    config = ClassifierConfig()
    neu_root, bottle_root = args.datasets / "neu_det", args.datasets / "mvtec_bottle"
    neu = bottle = lat = None
    if "neu" not in args.skip and neu_root.is_dir():
        neu = neu_bench(neu_root, seeds=args.seeds, sizes=args.sizes, input_px=args.input_px, config=config,
                        test_per_class=args.test_per_class, cache=args.cache, rows_wanted=args.rows)
    if "bottle" not in args.skip and bottle_root.is_dir():
        bottle = bottle_bench(bottle_root, seeds=args.seeds, input_px=args.input_px, config=config)
    if "latency" not in args.skip and neu_root.is_dir():
        import tempfile

        spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=args.input_px,
                         input_height=args.input_px)
        with tempfile.TemporaryDirectory() as tmp:
            lat = latency_bench(neu_root, spec, config, Path(tmp))
        progress_line(f"latency: {lat}")
    text = render(neu, bottle, lat, args, time.perf_counter() - t0)
    if args.json is not None:
        import json

        raw = {"neu": None if neu is None else {k: v for k, v in neu.items() if k != "spec"},
               "bottle": bottle, "latency": lat}
        args.json.write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
