"""Classifier part of the quality suite (issue 16): every shared set with >= 3 defect classes, and the fetched ones.

Fetched sets (not in ../shared) live under ``../data/datasets`` and are built by their ``scripts/build_*.py``
(``pku_pcb_defects``: ``scripts/build_pku_pcb_defects.py``); a set that is absent is skipped.

Data flow per set: manifest defect images -> resized to the classifier's 224x224 input (what ``lineguard
train`` feeds it for square frames) -> frozen EfficientNet-Lite0, average and generalised-mean pooling
(``mean_gem``) of stage4..stage7 for every image (identity view) and of the default profile's 2
photometric copies of every image a split may train on, computed once and cached under ``--cache`` ->
per (seed, images per class, candidate): the library's own ``FeatureSet`` / ``fit_from_features`` (CV-
chosen L2, per-class ``min_confidence``) -> held-out metrics. Candidates are the per-line choices of
``lineguard_models.classifier_select`` (stages x photometric copies); the *default* row is
``ClassifierConfig()`` with the conservative camera profile of ``lineguard train`` (stage5+6, 2 copies,
no views); the *per-line choice* row is the candidate with the best cross-validated accuracy on the
training images of that split alone (``classifier_select.pick``), never the test set.

End to end: ``mvtec_bottle`` is the only set with good images; its bundles are trained as ``lineguard
train`` ships (automatic configuration, ``autoconfig.train_auto`` with the product's budgets, the quality
suite's ``train_config``) with the current code into ``/work/data/quality/bundles/e2e_auto`` when missing
(50 goods + half of each defect class, ``quality_sets.make_split``); until stop 11 the suite's fixed
default recipe (``bundles/e2e``),
scored by the edge ``BundleRunner`` + ``decide`` on the held-out defects: named right = verdict reject
or recheck AND ``defect_class`` is the true class (an escape, a wrong class or ``unknown`` count as
wrong; the best guess is reported too). NEU-DET, X-SDD and DeepPCB crops have no good images, so no
anomaly stage can be trained: their end-to-end share is the classifier with the ``unknown`` routing
on every held-out defect as if flagged (named right = arg-max correct and not ``unknown``).

Usage: ``nice -n 10 .venv/bin/python scripts/bench_quality_classifier.py [--sets ...] [--doc]``;
results JSON under ``/work/data/quality/classifier``; ``--doc`` writes docs/benchmarks/quality-classifier.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_sets as q

from lineguard.imageio import is_grey_rgb, read_image
from lineguard.preprocess import InputSpec, prepare, spec_for_images
from lineguard_models.augment import CameraProfile, augment
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, training_views
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_graph import PooledFeatures
from lineguard_models.classifier_select import (
    CANDIDATES,
    Candidate,
    evaluate,
    feature_columns,
    line_candidates,
    pick,
    probs_as_read,
    with_views_twins,
)
from lineguard_models.views import IDENTITY, Views

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# public sets fetched by this project (not in ../shared): built by their scripts/build_*.py, outside the repo
FETCHED = Path(__file__).resolve().parents[2] / "data" / "datasets"
BASE = Path("/work/data/quality")
SETS = ("neu_det", "xsdd_steel", "deeppcb_defects", "mvtec_bottle", "pku_pcb_defects")
GROUPED = {"pku_pcb_defects"}  # crops of one photo stay on one side of a split (photo_group of the file name)
TEST_PER_CLASS = 100  # held-out cap per class on the grouped sets (the fixed NEU-DET test set's size)
ALL_STAGES = ("stage4", "stage5", "stage6", "stage7")
LITE0 = "efficientnet_lite0"  # the product classifier's backbone; --backbone measures another
PX = 224
COPIES = 2  # CameraProfile.copies_per_image default (the conservative profile of lineguard train)
Image = npt.NDArray[Any]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def set_root(name: str) -> Path:
    """The shared copy of a set, else the project's fetched copy (``FETCHED``)."""
    return DATASETS / name if (DATASETS / name).is_dir() else FETCHED / name


def load_set(name: str) -> tuple[list[Image], npt.NDArray[np.int64], tuple[str, ...], list[str]]:
    """Defect images (resized to PX x PX), labels, class names, manifest paths."""
    items = [it for it in q.read_manifest(set_root(name)) if it.label != "good"]
    classes = tuple(sorted({it.label for it in items}))
    images = []
    for it in items:
        im = read_image(set_root(name) / it.path)
        im = np.ascontiguousarray(im[..., 0]) if is_grey_rgb(im) else im
        # DeepPCB crops differ in size (21-123 px): the classifier sees every input at PX x PX
        images.append(cv2.resize(im, (PX, PX), interpolation=cv2.INTER_AREA if min(im.shape[:2]) > PX
                                 else cv2.INTER_LINEAR))
    return images, np.array([classes.index(it.label) for it in items], np.int64), classes, [it.path for it in items]


def splits(name: str, y: npt.NDArray[np.int64], paths: list[str], seed: int, n_max: int
           ) -> tuple[dict[int, npt.NDArray[np.int64]], npt.NDArray[np.int64]]:
    """(class -> training order, of which the first n train; held-out test indices).

    NEU-DET: the classifier benchmark's fixed test set (100 per class) and per-seed draws from the rest.
    mvtec_bottle: the quality suite's split (make_split: half of each class trains, the rest tests).
    Grouped sets (crops cut from shared photos): per seed and class the photos are permuted; one crop of each
    of the first ``n_max`` photos may train (one per photo, as a line engineer labels defects of different
    parts), every crop of the other photos may test, at most ``TEST_PER_CLASS`` drawn from them.
    Others: per seed, the first ``n_max`` of each class's permutation may train, the rest tests.
    """
    if name == "mvtec_bottle":
        sp = q.make_split(DATASETS, name, seed)
        idx = {p: i for i, p in enumerate(paths)}
        train = np.array([idx[it.path] for it in sp.calib_defects])
        test = np.array(sorted(idx[it.path] for it in sp.test if it.label != "good"))
        return {c: train[y[train] == c] for c in np.unique(y)}, test
    if name == "neu_det":
        split_rng = np.random.default_rng(1234)
        test, pool = [], []
        for c in np.unique(y):
            perm = split_rng.permutation(np.flatnonzero(y == c))
            test += perm[:100].tolist()
            pool += perm[100:].tolist()
        pool_a = np.array(pool)
        rng = np.random.default_rng(seed)
        return {c: rng.permutation(pool_a[y[pool_a] == c]) for c in np.unique(y)}, np.array(test)
    rng = np.random.default_rng([seed, 16])
    order, test = {}, []
    if name in GROUPED:
        groups = np.array([photo_group(p) for p in paths])
        for c in np.unique(y):
            photos = rng.permutation(np.unique(groups[y == c]))
            order[c] = np.array([rng.choice(np.flatnonzero((groups == g) & (y == c))) for g in photos[:n_max]])
            rest = np.flatnonzero(np.isin(groups, photos[n_max:]) & (y == c))
            test += rng.choice(rest, min(TEST_PER_CLASS, len(rest)), replace=False).tolist()
        return order, np.array(sorted(test))
    for c in np.unique(y):
        perm = rng.permutation(np.flatnonzero(y == c))
        order[c] = perm[:n_max]
        test += perm[n_max:].tolist()
    return order, np.array(test)


def photo_group(path: str) -> str:
    """The source photo of a crop (``<photo>_roi_<k>.jpg``, the grouped sets' naming)."""
    return Path(path).name.rsplit("_roi_", 1)[0]


class Cache:
    """Pooled features (average and GeM) of stage4..7 per image (identity) and per photometric copy, computed once."""

    def __init__(self, name: str, images: list[Image], root: Path, backbone: str = LITE0) -> None:
        lite = "" if backbone == LITE0 else f"_{backbone}"
        self.images, self.path = images, root / f"{name}_{PX}_mean_gem{lite}.npz"
        self.spec = spec_for_images(images[:3], input_width=PX, input_height=PX)
        self.profile = CameraProfile.conservative_for(self.spec)
        bb = EfficientNetLite0.from_state_dict_file(out_stages=ALL_STAGES, variant=backbone)  # type: ignore[arg-type]
        # [mean, gem] per stage: every candidate's pooling is a column slice (classifier_select.feature_columns)
        self.pooled = PooledFeatures(bb, max_value=self.spec.max_value, pooling="mean_gem").eval()
        self.dims = {s: bb.stage_channels[s] for s in ALL_STAGES}
        d = self.pooled.out_dim
        if self.path.exists():
            z = np.load(self.path)
            self.x, self.have, self.cp, self.have_cp = z["x"], z["have"], z["cp"], z["have_cp"]
        else:
            n = len(images)
            self.x, self.have = np.zeros((n, d), np.float32), np.zeros(n, bool)
            self.cp, self.have_cp = np.zeros((n, COPIES, d), np.float32), np.zeros(n, bool)
        self.s_per_pass: float | None = None
        # the other orientation views of every image a split may train on: what train_classifier's views
        # candidates train on where no camera profile is declared (classifier.training_views; stop 14)
        free = training_views(None, self.spec, ClassifierConfig())[1]
        assert free is not None  # the default config selects per line
        self.views = free
        self.vpath = root / f"{name}_{PX}_mean_gem{lite}_views.npz"
        if self.vpath.exists():
            z = np.load(self.vpath)
            self.xv, self.have_v = z["xv"], z["have_v"]
        else:
            self.xv = np.zeros((len(images), len(free) - 1, d), np.float32)
            self.have_v = np.zeros(len(images), bool)

    def ensure_views(self, ids: npt.NDArray[np.int64]) -> None:
        todo = [int(i) for i in ids if not self.have_v[i]]
        for s in range(0, len(todo), 16):
            part = todo[s : s + 16]
            with torch.inference_mode():
                batch = torch.from_numpy(np.concatenate([prepare(self.images[i], self.spec)[0] for i in part]))
                feats = [self.pooled(Views.apply(v, batch)).numpy() for v in self.views.names[1:]]
            self.xv[part] = np.stack(feats, axis=1)
            self.have_v[part] = True
            if (s // 16) % 8 == 7 or s + 16 >= len(todo):  # every 128 images and at the end: a killed run keeps most
                np.savez(self.vpath, xv=self.xv, have_v=self.have_v)
        if todo:
            log(f"{self.vpath.name}: {len(todo)} images x {len(self.views) - 1} views")

    def _extract(self, ims: Sequence[Image]) -> npt.NDArray[np.float32]:
        out = []
        with torch.inference_mode():
            for s in range(0, len(ims), 16):
                batch = np.concatenate([prepare(im, self.spec)[0] for im in ims[s : s + 16]])
                out.append(self.pooled(torch.from_numpy(batch)).numpy())
        return np.concatenate(out).astype(np.float32)

    def ensure(self, ids: npt.NDArray[np.int64], copies: npt.NDArray[np.int64]) -> None:
        t0, passes = time.perf_counter(), 0
        todo = [int(i) for i in ids if not self.have[i]]
        for s in range(0, len(todo), 64):
            part = todo[s : s + 64]
            self.x[part] = self._extract([self.images[i] for i in part])
            self.have[part] = True
            passes += len(part)
            self._save(t0, passes)  # a killed run keeps what it computed
        todo = [int(i) for i in copies if not self.have_cp[i]]
        for s in range(0, len(todo), 32):
            part = todo[s : s + 32]
            ims = [augment(self.images[i], self.profile, np.random.default_rng([7, i, j]))
                   for i in part for j in range(COPIES)]
            self.cp[part] = self._extract(ims).reshape(len(part), COPIES, -1)
            self.have_cp[part] = True
            passes += len(ims)
            self._save(t0, passes)
        if passes:
            log(f"{self.path.name}: {passes} backbone passes, {(self.s_per_pass or 0) * 1e3:.0f} ms each")
        elif self.s_per_pass is None:
            self.s_per_pass = float(np.load(self.path)["s_per_pass"])

    def _save(self, t0: float, passes: int) -> None:
        self.s_per_pass = (time.perf_counter() - t0) / passes
        np.savez(self.path, x=self.x, have=self.have, cp=self.cp, have_cp=self.have_cp, s_per_pass=self.s_per_pass)

    def feature_set(self, cand: Candidate, classes: tuple[str, ...], idx: npt.NDArray[np.int64],
                    y: npt.NDArray[np.int64]) -> FeatureSet:
        cols = feature_columns(self.dims, ALL_STAGES, cand.stages, have_pooling="mean_gem",
                               want_pooling=cand.pooling)
        x = self.x[idx][:, cols]
        if cand.copies:
            x_aug = self.cp[idx][:, : cand.copies][:, :, cols].reshape(-1, len(cols))
            src = np.repeat(np.arange(len(idx)), cand.copies)
        else:
            x_aug, src = np.zeros((0, len(cols)), np.float32), np.zeros(0, np.int64)
        return FeatureSet(classes=classes, x=x, y=y[idx], x_aug=x_aug, aug_source=src,
                          x_views=self.xv[idx][:, :, cols] if cand.views else None)


def named_scores(p: npt.NDArray[np.float32], yt: npt.NDArray[np.int64], classes: Sequence[str],
                 thr: dict[str, float]) -> dict[str, Any]:
    """Held-out class probabilities with the edge's ``unknown`` routing (top probability below its class's
    ``min_confidence``): accuracy of the best guess, unknown rate, named right, per-class recall."""
    pred = p.argmax(1)
    unknown = p.max(1) < np.array([thr[classes[j]] for j in pred])
    return {"accuracy": float((pred == yt).mean()), "unknown_rate": float(unknown.mean()),
            "named_right": float(((pred == yt) & ~unknown).mean()),
            "recall": {c: float((pred[yt == i] == i).mean()) for i, c in enumerate(classes)}}


def left_out(y: npt.NDArray[np.int64], classes: tuple[str, ...], order: dict[int, npt.NDArray[np.int64]], n: int
             ) -> Iterator[tuple[int, tuple[str, ...], npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Each class never trained, in turn (the unknown-routing benches): (the class left out, the other classes'
    names, their training rows: the first ``n`` of each in ``order``, the labels renumbered over them, -1 for the
    class left out)."""
    for left in range(len(classes)):
        keep = [c for c in range(len(classes)) if c != left]
        relabel = np.full_like(y, -1)
        for i, c in enumerate(keep):
            relabel[y == c] = i
        yield left, tuple(classes[c] for c in keep), np.concatenate([order[c][:n] for c in keep]), relabel


def append_jsonl(path: Path | None, row: dict[str, Any]) -> None:
    """Given ``path``, append one result row there as a JSON line (the classifier benches' result files)."""
    if path is not None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _candidates() -> list[Candidate]:
    """The per-line candidates of a line with ``lineguard train``'s default classifier and profile."""
    cfg = ClassifierConfig()
    return line_candidates(cfg.stages, COPIES, cfg.pooling, free_views=True)  # the profile is not declared


Plan = tuple[dict[int, npt.NDArray[np.int64]], npt.NDArray[np.int64]]


def prepare_set(name: str, seeds: Sequence[int], n_max: int, *, cache_dir: Path = BASE / "classifier",
                backbone: str = LITE0, copies: bool = True, views_of: str = "pool"
                ) -> tuple[Cache, npt.NDArray[np.int64], tuple[str, ...], list[Plan]]:
    """A set's images, its seeded splits (``splits``) and the cached features they need: every image a split
    trains or tests on, the photometric copies of those it may train on (``copies``) and the other orientation
    views of those it may train on (``views_of="pool"``) or of every one (``"all"``; ``""``: none)."""
    images, y, classes, paths = load_set(name)
    cache = Cache(name, images, cache_dir, backbone)
    plans = [splits(name, y, paths, s, n_max) for s in seeds]
    need = np.unique(np.concatenate([np.concatenate([*o.values(), t]) for o, t in plans]))
    pool = np.unique(np.concatenate([np.concatenate(list(o.values())) for o, _ in plans]))
    cache.ensure(need, pool if copies else np.zeros(0, np.int64))
    if views_of:
        cache.ensure_views(pool if views_of == "pool" else need)
    return cache, y, classes, plans


def trainings(name: str, order: dict[int, npt.NDArray[np.int64]], sizes: Sequence[int]
              ) -> list[tuple[int, npt.NDArray[np.int64]]]:
    """(images per class, training rows) for each size; mvtec_bottle trains on all its split allows (10-11)."""
    ns = sizes if name != "mvtec_bottle" else [min(len(v) for v in order.values())]
    return [(int(n), np.concatenate([v[:n] for v in order.values()])) for n in ns]


def run_set(name: str, seeds: Sequence[int], sizes: Sequence[int], cache_dir: Path,
            candidates: Sequence[Candidate] | None = None, backbone: str = LITE0) -> dict[str, Any]:
    candidates = list(candidates) if candidates is not None else _candidates()
    config = ClassifierConfig()
    # the views twins read the held-out images through their views too (classifier_select.views_twin)
    views = any(c.views for c in candidates)
    cache, y, classes, plans = prepare_set(name, seeds, max(sizes), cache_dir=cache_dir, backbone=backbone,
                                           copies=any(c.copies for c in candidates),
                                           views_of=("all" if config.views_when_unsure else "pool") if views else "")
    rows = []
    for seed, (order, test) in zip(seeds, plans, strict=True):
        for n, train in trainings(name, order, sizes):
            t0 = time.perf_counter()
            fs_of = functools.partial(cache.feature_set, classes=classes, idx=train, y=y)
            cands = evaluate(fs_of, candidates, config=config, seed=seed)
            cands = with_views_twins(cands, fs_of, config=config, seed=seed)  # as select_and_fit adds them
            fit_s = time.perf_counter() - t0
            chosen = pick(cands)
            row: dict[str, Any] = {"seed": seed, "n": int(n), "n_test": len(test), "chosen": chosen.name,
                                   "base": candidates[0].name,
                                   "fit_s_all_candidates": round(fit_s, 1), "candidates": {}}
            for ev in cands:
                if ev.skipped:  # a twin refused (most parts through the views)
                    row["candidates"][ev.candidate.name] = {"skipped": ev.skipped}
                    continue
                fs_test = cache.feature_set(ev.candidate, classes, test, y)
                passes = len(train) * (1 + ev.candidate.copies)
                row["candidates"][ev.candidate.name] = {
                    "cv_accuracy": ev.cv_accuracy, "cv_log_loss": ev.cv_log_loss, "fit_s": ev.fit_s,
                    "train_s_est": round(passes * (cache.s_per_pass or 0) + ev.fit_s, 1),
                    **named_scores(probs_as_read(ev, fs_test, np.arange(len(test))), y[test], classes,
                                   ev.thresholds),
                    **({"views_when_unsure": ev.report["views_only_when_unsure"]}
                       if ev.candidate.views_when_unsure else {})}
            rows.append(row)
            d, ch = row["candidates"][candidates[0].name], row["candidates"][chosen.name]
            log(f"{name} seed {seed} n={n}: default acc {d['accuracy']:.4f} named {d['named_right']:.4f} | "
                f"chosen {chosen.name} acc {ch['accuracy']:.4f} (cv {ch['cv_accuracy']:.4f})")
            partial = {"set": name, "classes": list(classes), "counts": np.bincount(y).tolist(), "rows": rows,
                       "s_per_pass": cache.s_per_pass, "loadavg": os.getloadavg()[0]}
            (cache_dir / f"{name}.json").write_text(json.dumps(partial, indent=1), encoding="utf-8")  # per row
    return partial


def latency(out_dir: Path, runs: int = 60, backbone: str = LITE0) -> dict[str, Any]:
    """ONNX Runtime CPU (2 threads) p50/p95 of the exported image-path classifier per stage set: the graph the
    per-line choice prices (``classifier_bundle.export_priced_graph``, the default config), timed longer."""
    from lineguard_models.classifier_bundle import export_priced_graph
    from lineguard_models.ortscore import cpu_session

    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=PX, input_height=PX)
    x = np.random.default_rng(0).uniform(0, 255, (1, 1, PX, PX)).astype(np.float32)
    res = {}
    # the single-view graph of every stage set; the views twins' second engine (8 views averaged) of theirs
    every_view = Views.for_profile(flips=("horizontal", "vertical"), rotate_90=True, square=True)
    priced = [(s, IDENTITY) for s in sorted({c.stages for c in CANDIDATES if c.stages})]
    priced += [(s, every_view) for s in sorted({c.stages or ClassifierConfig().stages for c in CANDIDATES if c.views})]
    for stages, views in priced:
        key = "+".join(stages) + ("" if len(views) == 1 else f" ({len(views)} views averaged)")
        path = export_priced_graph(stages, out_dir / f"clf_{'_'.join(stages)}_{len(views)}v.onnx", spec=spec,
                                   config=ClassifierConfig(), n_classes=3, variant=backbone,  # type: ignore[arg-type]
                                   views=views)
        sess = cpu_session(path)
        for _ in range(5):
            sess.run(None, {"image": x})
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {"image": x})
            t.append((time.perf_counter() - t0) * 1e3)
        res[key] = {"p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95))}
        log(f"latency {key}: {res[key]}")
    return {"per_stages": res, "loadavg": os.getloadavg()[0]}


def end_to_end_bottle(seeds: Sequence[int]) -> dict[str, Any]:
    """The quality suite's product bundles on the held-out bottle defects (edge runner + decide)."""
    from lineguard.bundle import load_bundle
    from lineguard.contracts import Frame
    from lineguard.decision import DecisionPolicy, decide
    from lineguard.engines.config import CpuProvider, OrtEngineConfig
    from lineguard.engines.runner import BundleRunner

    out = []
    for seed in seeds:
        bdir = BASE / "bundles" / "e2e_auto" / f"mvtec_bottle_s{seed}"
        if not (bdir / "manifest.json").exists():  # as lineguard train ships it (auto), with today's code
            from bench_quality import train_config

            from lineguard_models.autoconfig import AutoConfig, train_auto

            folder = q.build_folder(q.make_split(DATASETS, "mvtec_bottle", seed), BASE / "folders")
            t0 = time.perf_counter()
            train_auto(folder, bdir, train_config(seed, "default"), AutoConfig(), progress=lambda _: None,
                       overwrite=True)
            log(f"bottle e2e seed {seed}: trained {bdir} in {time.perf_counter() - t0:.0f} s")
        bundle = load_bundle(bdir)
        policy = DecisionPolicy.from_manifest(bundle.manifest)
        mono = bool(bundle.manifest.provenance["dataset"]["mono_from_rgb"])
        sp = q.make_split(DATASETS, "mvtec_bottle", seed)
        cfg = OrtEngineConfig(providers=[CpuProvider(type="cpu")], intra_op_threads=2)
        verdicts, named, guessed, flagged_ms, flagged_ims = [], [], [], [], []
        with BundleRunner.from_bundle(bundle, cfg) as runner:
            runner.warmup(20)
            for i, it in enumerate(x for x in sp.test if x.label != "good"):
                im = read_image(DATASETS / "mvtec_bottle" / it.path)
                im = np.ascontiguousarray(im[..., 0]) if mono and im.ndim == 3 else im
                res = runner.infer(im)
                frame = Frame(seq=i, part_id=i, t_capture_ns=0, image=np.zeros((0, 0), np.uint8), camera_id="q")
                d = decide(res, frame, policy, t_decided_ns=0)
                verdicts.append(d.verdict.label)
                named.append(d.verdict.label in ("reject", "recheck") and d.defect_class == it.label)
                guessed.append(d.verdict.label in ("reject", "recheck") and d.class_guess == it.label)
                if d.verdict.label != "accept":
                    flagged_ms.append(res.timings_ms["total"])
                    flagged_ims.append(im)
            for _ in range(2):  # every flagged part timed 3 times: this 2-core VM has slow spells of seconds
                flagged_ms += [runner.infer(im).timings_ms["total"] for im in flagged_ims]
        v = np.array(verdicts)
        cal = bundle.manifest.calibration or {}
        clf_report, selection = cal.get("classifier", {}), cal.get("classifier", {}).get("selection", {})
        out.append({"seed": seed, "n_defects": len(v), "named_right": float(np.mean(named)),
                    "guess_right": float(np.mean(guessed)), "escape": float((v == "accept").mean()),
                    "recheck": float((v == "recheck").mean()),
                    "classifier_in_bundle": bundle.manifest.classifier is not None,
                    "flagged_total_ms_p50": float(np.median(flagged_ms)) if flagged_ms else None,
                    "cv": clf_report.get("accuracy"), "chosen": selection.get("chosen"),
                    "anomaly_chosen": (cal.get("auto") or {}).get("chosen"),
                    "classifier_p50_ms": selection.get("classifier_p50_ms")})
        log(f"bottle e2e seed {seed}: {out[-1]}")
    return {"rows": out, "loadavg": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=list(SETS))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="*", default=[20, 40])
    p.add_argument("--out", type=Path, default=BASE / "classifier")
    p.add_argument("--skip", nargs="*", default=[], choices=["latency", "e2e"])
    p.add_argument("--candidates", nargs="*", default=[c.name for c in CANDIDATES],
                   help="per-line candidates to cross-validate (the first must be default)")
    p.add_argument("--doc", action="store_true", help="write docs/benchmarks/quality-classifier.md from --out")
    p.add_argument("--backbone", default=LITE0, choices=[LITE0, "efficientnet_lite2"],
                   help="frozen backbone of the classifier-only arms (the product's is Lite0; e2e uses the product's)")
    args = p.parse_args(argv)
    if args.doc:
        from quality_classifier_doc import render

        doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "quality-classifier.md"
        doc.write_text(render(args.out), encoding="utf-8")
        print(doc.read_text(encoding="utf-8"))
        return 0
    if not DATASETS.is_dir():
        print(f"skip: {DATASETS} not found (benchmarks need the shared datasets)")
        return 0
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        if set_root(name).is_dir():
            res = run_set(name, args.seeds, args.sizes, args.out,
                          [c for c in _candidates() if c.name in args.candidates], args.backbone)
            (args.out / f"{name}.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    if "e2e" not in args.skip:
        (args.out / "e2e_mvtec_bottle.json").write_text(json.dumps(end_to_end_bottle(args.seeds), indent=1))
    if "latency" not in args.skip:
        (args.out / "latency.json").write_text(json.dumps(latency(args.out, backbone=args.backbone), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
