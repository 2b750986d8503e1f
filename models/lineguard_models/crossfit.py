"""Out-of-fold calibration scores of the good images the memory bank is fitted on.

Data flow (inside ``pipeline.train`` when ``TrainConfig.calibration_folds`` >= 2): the good
training images -> K seeded folds -> for each fold a memory bank fitted on the *other* folds
(same backbone, bank size, camera-profile variants and seed as the final bank) -> exported to
ONNX in a scratch folder -> the fold's images scored with ONNX Runtime through
``lineguard.preprocess.prepare`` (the edge's path) -> :class:`ortscore.Scored` rows labelled good
-> calibration, beside the held-out good and defect images. The final bank is then fitted on
all good images as before.

Why: a good image fitted into the bank scores about 0 on it, so only held-out goods could
calibrate, and with 50-60 good images the reject threshold came from 7-20 of them and jumped
between retrains (docs/benchmarks/data-loop.md). An out-of-fold score is what the final bank
gives a *new* good part of the same kind, slightly pessimistic (each fold's bank saw (K-1)/K of
the images), so every good image calibrates.

Must never: score an image with a bank that was fitted on it, let a defect image reach fitting,
or write anything outside the scratch folder it is given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lineguard.errors import DatasetError
from lineguard.preprocess import InputSpec
from lineguard_models.anomaly import AnomalyModelConfig, batched, fit_anomaly_model
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import load_backbone
from lineguard_models.bank_augment import BankAugmentConfig
from lineguard_models.data import Dataset, Sample
from lineguard_models.export import export_onnx
from lineguard_models.ortscore import OrtScorer, Progress, Scored, iter_batches, score_samples


def fold_of(samples: Sequence[Sample], folds: int, seed: int) -> list[int]:
    """Fold index of each sample: a seeded permutation dealt round-robin, so fold sizes differ by
    at most one and the assignment does not depend on file order beyond the sorted input."""
    order = np.random.default_rng([seed, folds]).permutation(len(samples))
    out = [0] * len(samples)
    for rank, i in enumerate(order):
        out[int(i)] = rank % folds
    return out


def out_of_fold_scores(ds: Dataset, samples: Sequence[Sample], spec: InputSpec, model_cfg: AnomalyModelConfig, *,
                       folds: int, seed: int, profile: CameraProfile | None, bank: BankAugmentConfig,
                       scratch: Path, progress: Progress) -> list[Scored]:
    """Score every sample with a bank fitted without its fold (see the module docstring)."""
    if folds < 2 or len(samples) < folds:
        raise DatasetError(f"out-of-fold calibration needs at least as many good training images as folds: "
                           f"{len(samples)} images for {folds} folds; add good images or lower calibration_folds")
    fold = fold_of(samples, folds, seed)
    backbone = load_backbone(model_cfg.backbone)  # one backbone for all folds: fitting never changes it
    scratch.mkdir(parents=True, exist_ok=True)
    out: list[Scored] = []
    t0 = time.monotonic()
    for k in range(folds):
        fit_s = [s for s, f in zip(samples, fold, strict=True) if f != k]
        held = [s for s, f in zip(samples, fold, strict=True) if f == k]
        batches = iter_batches(ds, fit_s, spec, profile=profile, bank=bank, seed=seed)
        scorer = fit_anomaly_model(batched(batches, model_cfg.batch_size), config=model_cfg,
                                   channels=spec.channels, max_value=spec.max_value, backbone=backbone)
        onnx_path = scratch / f"fold{k}.onnx"
        export_onnx(scorer, onnx_path)
        out += score_samples(OrtScorer(onnx_path, spec), ds, held, lambda _: None)
        onnx_path.unlink()
        progress(f"out-of-fold calibration: fold {k + 1}/{folds} ({len(fit_s)} fitted, {len(held)} scored), "
                 f"{time.monotonic() - t0:.1f} s")
    return sorted(out, key=lambda s: s.rel)
