"""Benchmark the few-shot defect classifier; writes docs/benchmarks/classifier.md.

Measures, on real datasets under ``--datasets`` (skips cleanly when absent):

* ``neu_det`` (6 classes, mono): held-out accuracy with 20 / 40 / 80 training images per class,
  mean and spread over seeds, for the plain logistic probe on pooled 1280-d head features and for
  the shipped classifier (``lineguard_models.classifier``: multi-scale pooled features, CV-chosen L2,
  camera-profile augmentation); plus the augmentation ablation: none vs physically plausible vs
  harmful kinds forced on (perspective, colour jitter, JPEG) on the same splits.
* ``mvtec_bottle``: the three defect classes, out-of-fold recall per class from
  ``train_classifier``'s own cross-validation.
* ONNX Runtime CPU latency of the exported classifier (intra_op_num_threads=2), and of the
  backbone prefix an anomaly engine on stage3/stage4 already computes (what a shared pass could save).

Speed: backbone features are computed once per image (and once per augmented copy) and cached;
every split then runs the library's own head fitting, cross-validation and threshold code
(``fit_from_features``). The harmful augmentations live here on purpose: no camera profile and no
CLI can reach them.
"""

from __future__ import annotations

import argparse
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
from lineguard.preprocess import InputSpec, spec_for_images
from lineguard_models.augment import CameraProfile, augment
from lineguard_models.classifier import (
    ClassifierConfig,
    FeatureExtractor,
    FeatureSet,
    fit_from_features,
    fit_head,
    train_classifier,
)

Image = npt.NDArray[Any]
NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
BOTTLE_CLASSES = ("broken_large", "broken_small", "contamination")

# NEU-DET: hot-rolled strip seen from above; the strip may pass either way round, so flips are
# physical; 90-degree turns are not (rolling direction is fixed relative to the camera).
NEU_PROFILE = CameraProfile(
    sensor="mono", bit_depth=8, orientation_specific=False, flips=("horizontal", "vertical"),
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


class CachedFeatures:
    """Features of every image (with a forward hook for the probe's 1280-d head features)."""

    def __init__(self, spec: InputSpec, config: ClassifierConfig) -> None:
        self.extract = FeatureExtractor.from_config(spec, config)
        backbone: Any = self.extract.features.backbone
        self._stage7: list[torch.Tensor] = []
        backbone.register_forward_hook(lambda _m, _i, out: self._stage7.append(out["stage7"]))
        self._backbone = backbone

    def __call__(self, images: Sequence[Image]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(classifier features, probe features) for ``images``."""
        self._stage7.clear()
        feats = self.extract(images)
        b = self._backbone  # probe = EfficientNet's own pre-logit features: head conv + BN + ReLU6 + GAP
        with torch.inference_mode():
            head = [F.relu6(b._bn1(b._conv_head(s7))).mean(dim=(2, 3)) for s7 in self._stage7]
        return feats, torch.cat(head).numpy()


def progress_line(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def features_of(cache: CachedFeatures, images: Sequence[Image], what: str) -> tuple[npt.NDArray[np.float32], ...]:
    parts, probes = [], []
    t0 = time.perf_counter()
    for s in range(0, len(images), 64):
        f, p = cache(images[s : s + 64])
        parts.append(f)
        probes.append(p)
    progress_line(f"{what}: {len(images)} images in {time.perf_counter() - t0:.0f} s")
    return np.concatenate(parts), np.concatenate(probes)


def augmented_features(
    cache: CachedFeatures, images: Sequence[Image], fn: Callable[[Image, np.random.Generator], Image],
    copies: int, what: str,
) -> npt.NDArray[np.float32]:
    """[len(images) * copies, D], copies of image i at rows i*copies .. i*copies+copies-1."""
    rng = np.random.default_rng(7)
    variants = [fn(im, rng) for im in images for _ in range(copies)]
    return features_of(cache, variants, what)[0]


def accuracy(pred: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> float:
    return float((pred == y).mean())


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


def neu_bench(root: Path, *, seeds: int, sizes: Sequence[int], input_px: int, config: ClassifierConfig,
              test_per_class: int) -> dict[str, Any]:
    data = load_classes(root, NEU_CLASSES)
    images = [im for c in NEU_CLASSES for im in data[c]]
    y = np.array([i for i, c in enumerate(NEU_CLASSES) for _ in data[c]], np.int64)
    spec = spec_for_images(images[:5], input_width=input_px, input_height=input_px)
    cache = CachedFeatures(spec, config)
    test_idx, orders = neu_splits(y, test_per_class=test_per_class, seeds=seeds)
    x_all, probe_all = features_of(cache, images, "neu_det clean features")
    # augmented copies only of images some split trains on (the held-out set is never augmented)
    used = np.unique(np.concatenate([o[c][: max(sizes)] for o in orders for c in o]))
    k = NEU_PROFILE.copies_per_image
    aug = {
        "plausible": augmented_features(cache, [images[i] for i in used],
                                        lambda im, r: augment(im, NEU_PROFILE, r), k, "plausible copies"),
        "harmful": augmented_features(cache, [images[i] for i in used], harmful, k, "harmful copies"),
    }
    pool_row = {int(g): j for j, g in enumerate(used)}
    results: dict[str, dict[int, list[float]]] = {}
    unknown: dict[int, list[float]] = {}
    for seed, order in enumerate(orders):
        for n in sizes:
            train = np.concatenate([order[c][:n] for c in range(len(NEU_CLASSES))])
            probe = fit_head(probe_all[train], y[train], len(NEU_CLASSES), l2=1e-3, max_iter=config.max_iter)
            results.setdefault("probe (head features, no aug)", {}).setdefault(n, []).append(
                accuracy(probe.probs(probe_all[test_idx]).argmax(1), y[test_idx]))
            for name in ("none", "plausible", "harmful"):
                if name == "none":
                    x_aug, src = np.zeros((0, x_all.shape[1]), np.float32), np.zeros(0, np.int64)
                else:
                    rows = np.array([pool_row[int(g)] * k + j for g in train for j in range(k)])
                    x_aug = aug[name][rows]
                    src = np.repeat(np.arange(len(train)), k)
                fs = FeatureSet(classes=NEU_CLASSES, x=x_all[train], y=y[train], x_aug=x_aug, aug_source=src)
                head, thr, _ = fit_from_features(fs, config=config, seed=seed)
                p = head.probs(x_all[test_idx])
                results.setdefault(f"classifier, augmentation {name}", {}).setdefault(n, []).append(
                    accuracy(p.argmax(1), y[test_idx]))
                if name == "plausible":
                    below = p.max(1) < np.array([thr[NEU_CLASSES[j]] for j in p.argmax(1)])
                    unknown.setdefault(n, []).append(float(below.mean()))
            progress_line(f"neu seed {seed} n={n}: " + ", ".join(
                f"{m}={v[n][-1] * 100:.1f}" for m, v in results.items()))
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
                           config=config.model_copy(update={"l2_grid": (1e-3,)}))
    path = out_dir / "classifier.onnx"
    clf.export_onnx(path)
    shape = (1, spec.channels, spec.input_height, spec.input_width)
    res = {"classifier": ort_latency_ms(path, shape, 100)}
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
                  f"Held-out set: {neu['test_images']} images (100 per class, fixed); each seed draws the "
                  "training images from the other 200 per class. *none / plausible / harmful* is the "
                  "augmentation ablation on the same splits (harmful = perspective warp + colour jitter "
                  "(brightness/contrast on mono) + JPEG q20-60, forced on).", "",
                  "| method | " + " | ".join(f"{n}/class" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for name, by_n in neu["results"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(by_n[n]) for n in sizes) + " |")
        lines += ["", "Held-out images of known classes that the shipped classifier (plausible augmentation) "
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
        lines += ["", "*backbone up to stage4* is the part an anomaly engine on stage3/stage4 computes anyway: "
                  "the most a shared backbone pass could save per part (the classifier continues from stage4 "
                  "to stage7).", ""]
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
                        test_per_class=args.test_per_class)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
