"""Training pipeline: dataset -> anomaly model -> ONNX -> calibration -> golden images -> bundle.

The composition root of the training side (``lineguard train`` and ``lineguard calibrate`` call
:func:`train` and :func:`recalibrate`). Calibration scores are computed with ONNX Runtime on the
exported graph through ``lineguard.preprocess.prepare`` -- the exact path the edge runs -- so the
thresholds fit what the line will see, not what torch computed. The image score is the maximum
over tiles. Every calibration score is kept in ``report/scores.csv`` inside the bundle so a later
``lineguard calibrate`` can add new images without retraining.

Must never: calibrate on a score from a bank or a verdict head fitted on the image (a fitted good
image calibrates only through its out-of-fold score, ``crossfit.py``, ``verdict_head.py``), write a
bundle anywhere but through ``lineguard.bundle.write_bundle`` (atomic, hashed), or let a defect image
reach the bank.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lineguard.bundle import VIEWS_ROLE, Bundle, load_bundle, staging_dir, write_bundle
from lineguard.errors import BundleError, CalibrationError, DatasetError
from lineguard.preprocess import InputSpec, TileSpec, tile_regions
from lineguard_models.augment import CameraProfile
from lineguard_models.bank_augment import BankAugmentConfig, bank_context, describe
from lineguard_models.bundle_files import (
    SCORES_FILE,
    git_commit,
    new_bundle_id,
    read_scores,
    verdict_of,
    versions,
    write_golden,
    write_scores,
)
from lineguard_models.calibration import CalibrationPolicy, CalibrationResult, calibrate
from lineguard_models.classifier import ClassifierConfig
from lineguard_models.data import Dataset, Sample, scan_dataset
from lineguard_models.ortscore import OrtScorer, Progress, Scored, by_label, file_sha256, iter_batches, score_samples
from lineguard_models.report import write_report
from lineguard_models.report_html import write_for_bundle
from lineguard_models.verdict_head import (
    VerdictHeadConfig,
    fuse_verdict_head,
    head_context,
    recalibrated_ceiling,
    recalibration_scorer,
)

if TYPE_CHECKING:  # crossfit imports torch: only when folds are fitted
    from lineguard_models.crossfit import OutOfFold

log = logging.getLogger(__name__)
ONNX_FILE = "anomaly.onnx"
_BIT_DEPTHS = (255, 1023, 4095, 16383, 65535)
InputSide = Literal["long", "short"]
AnomalyBackbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
ImageScore = Literal["patch_max", "map_max", "topk_mean"]  # as lineguard_models.anomaly (torch-free import here)


class TrainConfig(BaseModel):
    """Parameters of ``lineguard train`` (recorded in the bundle provenance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product: str = Field("product", min_length=1, max_length=64, description="product name in the bundle")
    recipe: int = Field(0, ge=0, le=65535, description="PLC recipe number this bundle serves")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random choice")
    input_size_px: int = Field(288, ge=32, le=2048, description="engine input size of the side named by "
                               "input_side (per tile, aspect ratio kept), px")
    input_side: InputSide = Field(
        "short", description="which tile side gets input_size_px: short (long frames keep their detail, the long "
        "side grows with the aspect ratio) or long (the whole frame fits in input_size_px)")
    tile_rows: int = Field(1, ge=1, le=16, description="tile rows")
    tile_cols: int = Field(1, ge=1, le=16, description="tile columns")
    tile_overlap_px: int = Field(0, ge=0, le=4096, description="tile overlap, image px")
    bank_size: int = Field(16384, ge=16, le=1_000_000, description="most memory bank rows after coreset selection")
    bank_fraction: float | None = Field(
        0.1, gt=0.0, le=1.0, description="anomaly bank = this share of the training images' patches (greedy coreset "
        "over every patch seen, turned copies included), at most bank_size rows; 1.0 = as many rows as the images "
        "have patches; None = bank_size rows (docs/anomaly-model.md)")
    backbone: AnomalyBackbone = Field("efficientnet_lite2", description="anomaly feature backbone (ImageNet weights)")
    stages: tuple[str, ...] = Field(("stage3", "stage4"), min_length=1, max_length=4,
                                    description="backbone stages of the anomaly patch features")
    neighbourhood_cells: Literal[1, 3, 5, 7] = Field(
        1, description="odd side of the window each stage's features are averaged over before the bank (1 = each "
        "feature cell alone: small local defects keep their contrast; 3 = PatchCore's local averaging; "
        "docs/benchmarks/quality.md)")
    image_score: ImageScore = Field(
        "topk_mean", description="anomaly image score: topk_mean (mean of the score_top_k largest patch distances), "
        "patch_max or map_max (docs/benchmarks/quality.md)")
    score_top_k: int = Field(10, ge=1, le=4096, description="patches averaged when image_score is topk_mean")
    bank_turns: Literal["auto", 1, 2, 4] = Field(
        "auto", description="turned copies of each good image in the anomaly bank: auto = the four 90-degree turns "
        "when the camera profile says rotate_90 (parts in any orientation), else none; 1, 2 (180 deg) or 4 (a "
        "non-square input turns by 180 deg only). The bank keeps the rows bank_fraction gives without turns, so "
        "the engine keeps its cost")
    max_good: int | None = Field(None, ge=1, description="most good images used for fitting (after hold-out)")
    max_defects_per_class: int | None = Field(None, ge=1, description="most defect images per class to calibrate")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9, description="share of good images held out")
    min_holdout: int = Field(5, ge=2, le=10_000, description="fewest good images held out for calibration")
    calibration_folds: int = Field(
        0, ge=0, le=20, description="0: a seeded holdout_fraction of the good images calibrates and is not fitted; "
        "K >= 2: every good image is fitted and also calibrates with an out-of-fold score (K extra banks, each "
        "fitted without one fold; holdout_fraction and min_holdout are then unused; docs/calibration.md)")
    golden_good: int = Field(2, ge=0, le=20, description="good golden self-test images")
    golden_defect: int = Field(3, ge=0, le=20, description="defect golden self-test images")
    batch_size: int = Field(8, ge=1, le=256, description="images per forward pass while fitting")
    allow_unreadable: bool = Field(False, description="skip unreadable files (listed in the report)")
    policy: CalibrationPolicy = Field(default_factory=lambda: CalibrationPolicy(), description="thresholds")
    camera_profile: Path | None = Field(
        None, description="camera profile YAML (docs/augmentation.md): drives the classifier's augmentation and "
        "the anomaly bank's variants (anomaly_bank); none = the classifier uses the conservative profile for the "
        "images' format and the anomaly bank sees the good images as they are"
    )
    anomaly_bank: BankAugmentConfig = Field(
        default_factory=lambda: BankAugmentConfig(),
        description="camera-profile variants of the good images fed to the anomaly bank; used only when "
        "camera_profile is given (docs/anomaly-model.md)",
    )

    verdict_head: VerdictHeadConfig = Field(default_factory=lambda: VerdictHeadConfig(), description="good-vs-defect "
                                            "head fused into the anomaly score (docs/anomaly-model.md)")
    classifier: ClassifierConfig = Field(
        default_factory=lambda: ClassifierConfig(),
        description="defect classifier settings (docs/classifier.md); trained when every defect folder has enough "
        "images",
    )

    @field_validator("calibration_folds")
    @classmethod
    def _folds_not_one(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("calibration_folds must be 0 (held-out calibration) or at least 2")
        return folds


def _max_value(ds: Dataset, samples: Sequence[Sample]) -> int:
    """Full scale of the camera: 255 for 8 bit; for 16-bit containers the smallest common bit depth
    (10/12/14/16) holding every training pixel, so a 12-bit camera is not scaled as if 16 bit."""
    if ds.dtype == "uint8":
        return 255
    return _bit_depth_scale(ds, tuple(samples))


@functools.lru_cache(maxsize=4)
def _bit_depth_scale(ds: Dataset, samples: tuple[Sample, ...]) -> int:
    """:func:`_max_value` of 16-bit images, which reads every one: cached, because automatic
    configuration builds the input spec of every candidate (pricing, folds, records) from the same
    training images."""
    peak = max(int(ds.load(s).max()) for s in samples)
    return next(v for v in _BIT_DEPTHS if v >= peak)


def input_size_for_side(width: int, height: int, side_px: int, side: InputSide) -> tuple[int, int]:
    """(input_width, input_height) of a ``width`` x ``height`` tile with its aspect ratio kept and
    ``side_px`` on its ``side`` ("long" or "short"); both multiples of 32."""
    side32 = max(32, round(side_px / 32) * 32)
    long_, short_ = max(width, height), min(width, height)
    if side == "long":
        other = max(32, round(side32 * short_ / long_ / 32) * 32)
    else:  # long frames keep their detail: the short side gets side_px, the long side grows with the aspect
        other = max(32, round(side32 * long_ / short_ / 32) * 32)
    return (side32, other) if (width >= height) == (side == "long") else (other, side32)


def make_input_spec(ds: Dataset, train: Sequence[Sample], cfg: TrainConfig) -> InputSpec:
    tiles = TileSpec(rows=cfg.tile_rows, cols=cfg.tile_cols, overlap_px=cfg.tile_overlap_px)
    widths = sorted(w for w, _ in ds.sizes)
    heights = sorted(h for _, h in ds.sizes)
    w, h = widths[len(widths) // 2], heights[len(heights) // 2]
    _, _, tw, th = tile_regions(w, h, tiles)[0]
    in_w, in_h = input_size_for_side(tw, th, cfg.input_size_px, cfg.input_side)
    fixed = len(ds.sizes) == 1
    return InputSpec(
        channels=ds.channels, dtype=ds.dtype, max_value=_max_value(ds, train),
        image_width=w if fixed else None, image_height=h if fixed else None,
        input_width=in_w, input_height=in_h, tiles=tiles,
    )


def split_good(ds: Dataset, cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """(training good, calibration good): a seeded hold-out of the training pool plus test/good.

    Images in ``ds.fit_only`` are never held out (they always fit); the hold-out is drawn from the
    others, and :func:`train` drops their out-of-fold scores, so they never calibrate.
    """
    everything = ds.good("train") or ds.good("")
    pool = [s for s in everything if s.rel not in ds.fit_only]
    fit_only = [s for s in everything if s.rel in ds.fit_only]
    extra = ds.good("test") if ds.good("train") else []
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    shuffled = [pool[i] for i in order]
    n_hold = max(cfg.min_holdout, math.ceil(cfg.holdout_fraction * len(pool)))
    if cfg.calibration_folds >= 2:  # out-of-fold scores calibrate: nothing is held back from fitting
        n_hold = 0 if cfg.max_good is None else max(0, len(pool) - cfg.max_good)
    held, train = shuffled[:n_hold], shuffled[n_hold:] + fit_only
    if not train:
        raise DatasetError(
            f"{len(pool)} good training images: holding out {n_hold} for calibration leaves none to train on; "
            "add good images"
        )
    if cfg.max_good is not None:
        train = train[: cfg.max_good]
    if cfg.calibration_folds > len(train):  # refused before an hour of training, not after
        raise DatasetError(f"calibration_folds {cfg.calibration_folds} needs at least as many good training images; "
                           f"there are {len(train)}: add good images or lower calibration_folds")
    return sorted(train, key=lambda s: s.rel), sorted(held, key=lambda s: s.rel) + extra


def pick_defects(ds: Dataset, cap: int | None, seed: int) -> list[Sample]:
    out: list[Sample] = []
    for cls in ds.defect_classes:
        items = ds.defects(cls)
        order = np.random.default_rng([seed, *cls.encode()]).permutation(len(items))
        out += sorted((items[i] for i in order[: cap or len(items)]), key=lambda s: s.rel)
    return out


def calibrate_scored(scored: Sequence[Scored], policy: CalibrationPolicy) -> tuple[CalibrationResult, Any, Any]:
    good, defects = by_label(scored)
    return calibrate(good, defects, policy), good, defects


def _report_context(ds: Dataset, extra: dict[str, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = {"dataset": ds.root, "fingerprint": ds.fingerprint, **extra}
    if ds.skipped:
        ctx["SKIPPED unreadable files"] = "; ".join(f"{b.rel} ({b.reason})" for b in ds.skipped)
    for w in ds.warnings:
        ctx.setdefault("dataset warnings", "")
        ctx["dataset warnings"] += w + "; "
    return ctx


def load_camera_profile(path: Path | None, spec: InputSpec) -> CameraProfile | None:
    """The camera profile a training run names (``TrainConfig.camera_profile``), checked against the
    input spec before any fitting; None when none is named."""
    if path is None:
        return None
    profile = CameraProfile.from_yaml(path)
    profile.verify_matches(spec)
    return profile


def anomaly_model_config(cfg: TrainConfig, spec: InputSpec) -> Any:
    """The :class:`~lineguard_models.anomaly.AnomalyModelConfig` that ``train`` fits for ``cfg`` (one place,
    so automatic configuration (``autoconfig.py``) and the folds score exactly what the bundle will hold)."""
    from lineguard_models.anomaly import AnomalyModelConfig, turns_used
    from lineguard_models.backbone import BackboneConfig

    turns = cfg.bank_turns
    if turns == "auto":
        profile = load_camera_profile(cfg.camera_profile, spec)
        turns = 4 if profile is not None and profile.rotate_90 else 1
    fraction = cfg.bank_fraction
    if fraction is not None:  # a share of the images' own patches: turned copies keep the bank's rows
        fraction = fraction / turns_used(turns, spec.input_height, spec.input_width)
    return AnomalyModelConfig(input_width_px=spec.input_width, input_height_px=spec.input_height,
                              backbone=BackboneConfig(kind=cfg.backbone, stages=cfg.stages),
                              bank_size=cfg.bank_size, bank_fraction=fraction,
                              buffer_rows=max(cfg.bank_size, AnomalyModelConfig().buffer_rows),
                              image_score=cfg.image_score, score_top_k=cfg.score_top_k, bank_turns=turns,
                              neighbourhood_cells=cfg.neighbourhood_cells,
                              seed=cfg.seed, batch_size=cfg.batch_size)


def train(data: Path, out: Path, cfg: TrainConfig, *, progress: Progress = print, overwrite: bool = False,
          oof: OutOfFold | None = None, auto: dict[str, Any] | None = None,
          clock: Callable[[], float] = time.monotonic) -> Bundle:
    """Train, export, calibrate and bundle. Returns the verified bundle at ``out``. ``oof``: out-of-fold good
    scores already computed for exactly this ``cfg`` (automatic configuration scored the winner with the same
    folds), used instead of fitting the folds again. ``auto``: the automatic configuration's record, written to
    the report and ``calibration.auto`` with ``final_training_s`` (``clock`` seconds up to the calibration)."""
    from lineguard_models.anomaly import batched, fit_anomaly_model
    from lineguard_models.export import export_onnx

    t0 = clock()
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists (choose another --out or remove it)")
    ds = scan_dataset(data, allow_unreadable=cfg.allow_unreadable)
    train_s, calib_good = split_good(ds, cfg)
    defects = pick_defects(ds, cfg.max_defects_per_class, cfg.seed)
    spec = make_input_spec(ds, train_s, cfg)
    profile = load_camera_profile(cfg.camera_profile, spec)  # refuse a wrong profile before an hour of training
    progress(f"dataset {data}: {len(train_s)} good for training, {len(calib_good)} good held out, "
             f"{len(defects)} defect images in {len(ds.defect_classes)} classes; "
             f"{'mono' if spec.channels == 1 else 'RGB'} {spec.dtype} (full scale {spec.max_value}), "
             f"input {spec.input_width}x{spec.input_height} x {spec.tiles.count} tiles")
    model_cfg = anomaly_model_config(cfg, spec)
    bank_aug = describe(profile, cfg.anomaly_bank, len(train_s))
    if bank_aug["applied"]:
        progress(f"anomaly bank: {bank_aug['copies_per_image']} camera-profile variants per good image "
                 f"({', '.join(bank_aug['kinds'])}); not allowed by the profile: "
                 f"{', '.join(bank_aug['kinds_not_allowed_by_profile']) or 'none'}")
    batches = iter_batches(ds, train_s, spec, profile=profile, bank=cfg.anomaly_bank, seed=cfg.seed)
    scorer = fit_anomaly_model(
        batched(batches, cfg.batch_size), config=model_cfg, channels=spec.channels,
        max_value=spec.max_value, images_total=bank_aug["images_fitted"] * spec.tiles.count,
        progress=lambda p: progress(f"fit: {p.images_seen}/{p.images_total} tiles, {p.elapsed_s:.1f} s"))
    staging = staging_dir(out)
    try:
        export_onnx(scorer, staging / ONNX_FILE)
        progress(f"exported {ONNX_FILE} ({(staging / ONNX_FILE).stat().st_size / 1e6:.1f} MB)")
        ort_scorer = OrtScorer(staging / ONNX_FILE, spec)
        scored = score_samples(ort_scorer, ds, calib_good + defects, progress)
        if cfg.calibration_folds >= 2:  # every fitted good image calibrates with an out-of-fold score
            from lineguard_models.crossfit import fold_bias, out_of_fold_scores, rescaled

            oof = oof if oof is not None else out_of_fold_scores(
                                     ds, train_s, spec, model_cfg, folds=cfg.calibration_folds, seed=cfg.seed,
                                     profile=profile, bank=cfg.anomaly_bank, scratch=staging / ".folds",
                                     progress=progress, reference=calib_good)
            bias = fold_bias(scored, oof.reference)  # the folds' banks score new goods higher than the final one
            progress(f"out-of-fold good scores x {bias['factor']:g} ({bias['pairs']} held-out goods scored by both "
                     "banks)" if bias["applied"] else f"out-of-fold good scores as they are: {bias['why']}")
            scored += [s for s in rescaled(oof.goods, bias["factor"])
                       if s.rel not in ds.fit_only]  # fit_only: fitted, never calibrating
            shutil.rmtree(staging / ".folds", ignore_errors=True)
        scored, golden_pool, head = fuse_verdict_head(  # verdict_head.py: the head's opinion inside anomaly.onnx
            scorer, ds, train_s, calib_good, defects, spec, scored, staging / ONNX_FILE, cfg.verdict_head,
            seed=cfg.seed, progress=progress, export=export_onnx, policy=cfg.policy)
        train_sha = sorted({file_sha256(s.path) for s in train_s})
        provenance = {
            "dataset": ds.summary(), "seed": cfg.seed, "versions": versions(), "git_commit": git_commit(),
            "training": cfg.model_dump(mode="json"), "anomaly_model": scorer.spec.to_dict(),
            "bank_rows": int(scorer.bank_rows), "train_images": len(train_s),
            "anomaly_bank_augmentation": bank_aug, "verdict_head": head,
            "training_image_sha256": train_sha, "train_seconds": round(clock() - t0, 1),
        }
        if cfg.calibration_folds >= 2:
            provenance["out_of_fold_bias"] = bias
        # --- defect classifier (issue 5: lineguard_models.classifier, docs/classifier.md) ---
        from lineguard_models.classifier_bundle import classifier_for_bundle

        classifier = classifier_for_bundle(ds, spec, staging, seed=cfg.seed, progress=progress, profile=profile,
                                           anomaly=None if head["applied"] else scorer,  # shared backbone
                                           anomaly_onnx=staging / ONNX_FILE,
                                           config=cfg.classifier)
        # --- end defect classifier ---
        if auto is not None:  # autoconfig's time budget: what the final training took (report and writing aside)
            auto = {**auto, "final_training_s": round(clock() - t0, 1)}
        policy = cfg.policy.model_copy(update={"accept_ceiling": head.get("accept_ceiling")})  # verdict head
        bundle = _finish(staging, out, ds, scored, policy, spec, provenance, cfg, overwrite, progress,
                         classifier=classifier, auto=auto, golden_pool=golden_pool)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"bundle {bundle.bundle_id} written to {out} in {clock() - t0:.1f} s")
    return bundle


# --- drift reference (data loop: lineguard.drift, docs/drift.md) ------------------------------------
def _drift_reference(ds: Dataset, scored: Sequence[Scored], max_value: int,
                     keep: dict[str, Any] | None) -> dict[str, Any] | None:
    """Image quality and scores of the good calibration images, measured with the edge's own code,
    so the line's drift monitor compares like with like (``manifest.calibration["reference"]``)."""
    from lineguard.drift_measures import reference_from_images

    by_rel = {s.rel: s for s in ds.good()}
    goods = [s for s in scored if s.label == "good" and s.rel in by_rel and file_sha256(by_rel[s.rel].path) == s.sha256]
    if not goods:  # recalibration with defect images only: the previous reference still holds
        previous: dict[str, Any] | None = (keep or {}).get("drift_reference")
        return previous
    return reference_from_images([ds.load(by_rel[s.rel]) for s in goods], [s.score for s in goods], max_value)
# --- end drift reference ------------------------------------------------------------------------------


def _finish(staging: Path, out: Path, ds: Dataset, scored: list[Scored], policy: CalibrationPolicy,
            spec: InputSpec, provenance: dict[str, Any], cfg: TrainConfig, overwrite: bool,
            progress: Progress, keep: dict[str, Any] | None = None,
            classifier: dict[str, Any] | None = None, auto: dict[str, Any] | None = None,
            golden_pool: list[Scored] | None = None) -> Bundle:
    """Calibrate, write report, scores and golden images, then the manifest (atomically).

    ``keep`` (recalibration): manifest sections carried over unchanged (engines, classifier and its CV
    report, score tolerance) plus ``golden``, whose files are already in ``staging``.
    """
    result, good, defects = calibrate_scored(scored, policy)
    progress(f"calibrated: accept < {result.lower:.6g}, reject >= {result.upper:.6g} ({result.mode})")
    write_scores(staging, scored)
    bundle_id = new_bundle_id(cfg.product, ds.fingerprint)
    context = _report_context(ds, {"bundle": bundle_id, "recipe": cfg.recipe,
                                   **bank_context(provenance.get("anomaly_bank_augmentation")),
                                   **head_context(provenance.get("verdict_head"))})
    clf_report = classifier["report"] if classifier else (keep or {}).get("classifier_report")  # kept on recalibration
    write_report(staging / "report", result, good, defects, title=f"Calibration report: {bundle_id}", context=context,
                 auto=auto, classifier=clf_report)
    # the same report as one self-contained page with thumbnails and anomaly maps (report_html.py)
    write_for_bundle(staging / "report", staging / ONNX_FILE, spec, ds, scored, result, good, defects,
                     title=f"Calibration report: {bundle_id}", context=context, auto=auto, classifier=clf_report)
    if keep is not None and keep.get("golden"):  # same graph, same scores: only the verdicts can change
        golden = [{**g, "expected_verdict": verdict_of(g["expected_score"], result.lower, result.upper)}
                  for g in keep["golden"]]
    else:
        # a fitted image's calibration score is out-of-fold; the bundle scores it ~0: never a golden test
        trained = set(provenance.get("training_image_sha256", []))
        golden = write_golden(staging, ds, [s for s in golden_pool or scored if s.sha256 not in trained], result,
                              cfg.golden_good, cfg.golden_defect, 1e-3)
    manifest = {
        "bundle_id": bundle_id, "product": cfg.product, "recipe": cfg.recipe,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": spec.model_dump(mode="json"),
        "engines": {"anomaly": {"file": ONNX_FILE, "input_name": "image",
                                "outputs": {"score": "anomaly_score", "map": "anomaly_map"}}},
        "thresholds": result.thresholds(),
        "calibration": {**result.summary(), "scores_file": SCORES_FILE,
                        "images": {"good": len(good), **{k: len(v) for k, v in defects.items()}},
                        "reference": _drift_reference(ds, scored, spec.max_value, keep),  # data loop: drift
                        **({"auto": auto} if auto else {})},  # autoconfig: every candidate and the choice
        "golden": golden,
        "provenance": provenance,
    }
    if classifier is not None:  # defect classifier (issue 5): engine, class list + thresholds, CV report
        manifest["engines"]["classifier"] = classifier["engine"]
        if classifier.get("views_engine"):  # fine-tuned: every view, run only below classifier.views_below
            manifest["engines"][VIEWS_ROLE] = classifier["views_engine"]
        manifest["engines"]["anomaly"]["outputs"].update(classifier.get("anomaly_outputs", {}))  # shared map
        manifest["classifier"] = classifier["classifier"]
    if clf_report is not None:  # its CV report (the classifier is not recalibrated: it carries over unchanged)
        manifest["calibration"]["classifier"] = clf_report
    if keep is not None:
        manifest.update({k: v for k, v in keep.items() if k in ("engines", "classifier", "score_tolerance")})
    return write_bundle(staging, manifest, out, overwrite=overwrite)


def recalibrate(bundle_dir: Path, data: Path, out: Path | None = None, *, policy: CalibrationPolicy | None = None,
                max_defects_per_class: int | None = None, allow_unreadable: bool = False,
                progress: Progress = print) -> Bundle:
    """New thresholds for an existing bundle from more images, without retraining.

    Scores of the previous calibration (``report/scores.csv``) are kept; images of ``data`` are
    scored with the bundle's own ONNX graph and added (an image already scored, by content hash,
    is not counted twice; an image the model was trained on is never used). The result is a new
    bundle (new id, report, manifest) written atomically to ``out`` (default: replace in place).
    """
    old = load_bundle(bundle_dir)
    m = old.manifest
    out = out or bundle_dir
    ds = scan_dataset(data, allow_unreadable=allow_unreadable, require_good=False)
    if (ds.channels, ds.dtype) != (m.input.channels, m.input.dtype):
        raise DatasetError(f"{data} holds {ds.channels}-channel {ds.dtype} images but bundle {m.bundle_id} "
                           f"expects {m.input.channels}-channel {m.input.dtype}: a different camera?")
    trained = set(m.provenance.get("training_image_sha256", []))
    previous = read_scores(old)
    known = {s.sha256 for s in previous}
    candidates = ds.good() + pick_defects(ds, max_defects_per_class, 0)
    fresh, used_in_training, duplicates = [], 0, 0
    for s in candidates:
        digest = file_sha256(s.path)
        if digest in trained:
            used_in_training += 1
        elif digest in known:
            duplicates += 1
        else:
            fresh.append(s)
            known.add(digest)
    progress(f"{len(previous)} scores from {m.bundle_id}; {len(fresh)} new images to score; skipped "
             f"{used_in_training} images the model was trained on and {duplicates} already scored")
    if not fresh:
        raise CalibrationError(f"{data} holds no images that are new to bundle {m.bundle_id}")
    base_policy = {k: v for k, v in m.thresholds.policy.items() if k != "mode"}
    policy = policy or CalibrationPolicy.model_validate(base_policy)
    capped = (m.provenance.get("verdict_head") or {}).get("applied") and policy.accept_ceiling is not None
    scorer, kept = (recalibration_scorer(old.path(m.engines["anomaly"].file), m.input, previous) if capped
                    else (OrtScorer(old.path(m.engines["anomaly"].file), m.input), None))
    scored = previous + score_samples(scorer, ds, fresh, progress)  # a head's bundle: plain scores too, same run
    ceiling = None
    if capped:
        policy, ceiling = recalibrated_ceiling(scored, policy, kept, progress)
    cfg = TrainConfig(product=m.product, recipe=m.recipe)
    provenance = {**m.provenance, "recalibrated_from": m.bundle_id, "recalibration_dataset": ds.summary(),
                  "recalibration_versions": versions(), **({"accept_ceiling": ceiling} if ceiling else {})}
    staging = staging_dir(out)
    try:
        keep_files = [e.file for e in m.engines.values()] + [g.file for g in m.golden]
        for rel in keep_files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(old.path(rel), staging / rel)
        keep = {"engines": {k: v.model_dump(exclude_unset=True) for k, v in m.engines.items()},
                "score_tolerance": m.score_tolerance, "golden": [g.model_dump() for g in m.golden],
                "drift_reference": m.calibration.get("reference"),  # data loop: used when no good images
                "classifier_report": m.calibration.get("classifier")}  # the report page repeats its section
        if m.classifier is not None:
            keep["classifier"] = m.classifier.model_dump()
        bundle = _finish(staging, out, ds, scored, policy, m.input, provenance, cfg, True, progress, keep)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"bundle {bundle.bundle_id} written to {out}")
    return bundle
