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

How pessimistic is measured, not guessed (:func:`fold_bias`): the good images held out of every bank
are scored by a fold's bank and by the final bank, and the median ratio of the two scales the
out-of-fold scores (:func:`rescaled`; never up, at most halved). On the quality suite the fold banks
scored new goods 5-15 % higher than the final bank at the 90th percentile (bottle 22.5 vs 20.8, metal
plate 38.6 vs 33.1, casting 42.2 vs 38.8), which put the reject threshold above the defects' reach:
rechecks and escapes on lines whose test images separate perfectly.

Must never: score an image with a bank that was fitted on it, let a defect image reach fitting,
or write anything outside the scratch folder it is given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True, slots=True)
class OutOfFold:
    """What the folds give calibration: every fitted good image's out-of-fold score (``goods``) and, for
    :func:`fold_bias`, the good images no bank was fitted on scored by one fold's bank (``reference``,
    rel -> score). Computed here by :func:`out_of_fold_scores` or by automatic configuration's folds."""

    goods: list[Scored]
    reference: dict[str, float] = field(default_factory=dict)


def out_of_fold_scores(ds: Dataset, samples: Sequence[Sample], spec: InputSpec, model_cfg: AnomalyModelConfig, *,
                       folds: int, seed: int, profile: CameraProfile | None, bank: BankAugmentConfig,
                       scratch: Path, progress: Progress, reference: Sequence[Sample] = ()) -> OutOfFold:
    """Score every sample with a bank fitted without its fold (see the module docstring); each of
    ``reference`` (good images no bank is fitted on) is scored by one fold's bank."""
    if folds < 2 or len(samples) < folds:
        raise DatasetError(f"out-of-fold calibration needs at least as many good training images as folds: "
                           f"{len(samples)} images for {folds} folds; add good images or lower calibration_folds")
    fold = fold_of(samples, folds, seed)
    backbone = load_backbone(model_cfg.backbone)  # one backbone for all folds: fitting never changes it
    scratch.mkdir(parents=True, exist_ok=True)
    out: list[Scored] = []
    ref: list[Scored] = []
    t0 = time.monotonic()
    for k in range(folds):
        fit_s = [s for s, f in zip(samples, fold, strict=True) if f != k]
        held = [s for s, f in zip(samples, fold, strict=True) if f == k]
        batches = iter_batches(ds, fit_s, spec, profile=profile, bank=bank, seed=seed)
        scorer = fit_anomaly_model(batched(batches, model_cfg.batch_size), config=model_cfg,
                                   channels=spec.channels, max_value=spec.max_value, backbone=backbone)
        onnx_path = scratch / f"fold{k}.onnx"
        export_onnx(scorer, onnx_path)
        scorer_k = OrtScorer(onnx_path, spec)
        out += score_samples(scorer_k, ds, held, lambda _: None)
        ref += score_samples(scorer_k, ds, [r for i, r in enumerate(reference) if i % folds == k], lambda _: None)
        onnx_path.unlink()
        progress(f"out-of-fold calibration: fold {k + 1}/{folds} ({len(fit_s)} fitted, {len(held)} scored), "
                 f"{time.monotonic() - t0:.1f} s")
    return OutOfFold(goods=sorted(out, key=lambda s: s.rel), reference={s.rel: s.score for s in ref})


MIN_BIAS_PAIRS = 5  # held-out goods scored by both banks before the out-of-fold scores are rescaled


def fold_bias(final: Sequence[Scored], fold_scores: Mapping[str, float]) -> dict[str, Any]:
    """How much higher a fold's bank scores a new good part than the final bank does.

    ``final``: the final bank's scores (goods held out of every bank among them); ``fold_scores``:
    the same goods scored by a fold's bank. Returns the record for the manifest: ``factor`` (median
    final / fold ratio, clipped to [0.5, 1]; 1 = not applied), ``pairs`` and why."""
    pairs = [(s.score, fold_scores[s.rel]) for s in final if s.label == "good" and s.rel in fold_scores]
    if len(pairs) < MIN_BIAS_PAIRS or any(a <= 0 or b <= 0 for a, b in pairs):
        why = (f"{len(pairs)} held-out good images scored by both banks (fewer than {MIN_BIAS_PAIRS})"
               if len(pairs) < MIN_BIAS_PAIRS else "scores not all positive: a ratio means nothing")
        return {"factor": 1.0, "pairs": len(pairs), "applied": False, "why": why}
    ratio = float(np.median([a / b for a, b in pairs]))
    factor = min(1.0, max(0.5, ratio))
    return {"factor": round(factor, 4), "median_ratio": round(ratio, 4), "pairs": len(pairs),
            "applied": factor < 1.0,
            "why": "median ratio of the final bank's to a fold bank's score over good images held out of both"}


def rescaled(oof: Sequence[Scored], factor: float) -> list[Scored]:
    """Out-of-fold scores times ``factor`` (:func:`fold_bias`)."""
    return [replace(s, score=s.score * factor) for s in oof] if factor != 1.0 else list(oof)
