"""The fine-tuned classifier (``ClassifierConfig.finetune``), after the frozen fit of ``classifier.train_classifier``.

Cached prefix maps of every orientation view of every image -> ``finetune.finetune_cross_validated`` (out-of-fold
probabilities, views averaged and through the identity view) -> with ``views_only_when_unsure`` the threshold
below which a part goes through the views (``finetune.choose_views_below``) -> per-class ``min_confidence`` on the
probabilities the edge will report -> the final run's graph. docs/classifier.md "Fine-tuning".
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from lineguard.errors import ConfigError
from lineguard.preprocess import InputSpec, prepare
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier_features import FeatureSet, Image, ProgressFn
from lineguard_models.classifier_graph import ClassifierGraph, PooledFeatures
from lineguard_models.classifier_head import (
    SoftmaxHead,
    confidence_thresholds,
    cv_summary,
    fit_head,
    stratified_folds,
)
from lineguard_models.finetune import (
    FinetuneConfig,
    HeadParams,
    LateStages,
    cascade_probs,
    choose_views_below,
    estimated_seconds,
    finetune_cross_validated,
    seconds_per_step,
    view_maps,
)
from lineguard_models.views import Views


class TuneSettings(Protocol):
    """What of ``classifier.ClassifierConfig`` fine-tuning reads (a Protocol: that module imports this one)."""

    stages: tuple[str, ...]
    finetune: FinetuneConfig | None
    finetune_folds: int
    finetune_max_map_mib: float
    views_only_when_unsure: bool
    confidence_quantile: float
    max_min_confidence: float
    max_iter: int


class Extractor(Protocol):
    """What of ``classifier.FeatureExtractor`` fine-tuning reads."""

    features: PooledFeatures
    spec: InputSpec


class OverBudget(Exception):
    """Fine-tuning would take longer than its time budget (estimated before the expensive part)."""


def finetuned(
    images_by_class: Mapping[str, Sequence[Image]], fs: FeatureSet, extract: Extractor, views: Views,
    frozen_report: dict[str, Any], *, config: TuneSettings, seed: int,
    progress: ProgressFn | None, time_budget_s: float | None = None,
) -> tuple[ClassifierGraph, dict[str, float], dict[str, Any], float | None]:
    """Fine-tune after the frozen fit (``config.finetune``): cached prefix maps of every view,
    cross-validated runs for the report and the thresholds, the final run on everything. Returns
    the graph with the tuned backbone, its thresholds, the report (the frozen CV kept in it) and, with
    ``views_only_when_unsure``, the top probability below which a part goes through the views (chosen
    out of fold: ``finetune.choose_views_below``; None: every part through every view).

    ``time_budget_s``: after the first 32 images' maps, the rest of the maps and every training step are
    estimated (``finetune.seconds_per_step`` measured here); above the budget :class:`OverBudget` is raised
    with the estimate, before the expensive part."""
    assert config.finetune is not None
    ft = config.finetune
    features = extract.features
    backbone = features.backbone
    if not isinstance(backbone, EfficientNetLite0):
        raise ConfigError("classifier fine-tuning needs the EfficientNet-Lite0 backbone")
    late0 = LateStages(backbone, stages=features.stages, first_trained_stage=ft.first_trained_stage)
    images = [im for c in fs.classes for im in images_by_class[c]]

    def chunk(part: Sequence[Image]) -> Tensor:
        raw = torch.from_numpy(np.concatenate([prepare(im, extract.spec)[0] for im in part]))
        return view_maps(backbone, raw, views, in_scale=features.get_buffer("in_scale"),
                         in_shift=features.get_buffer("in_shift"), last_block=late0.first_block - 1,
                         resize_to=features.resize_to)

    t0 = time.perf_counter()
    chunks = [chunk(images[:32])]  # its map size decides whether the rest is computed at all
    maps_s = (time.perf_counter() - t0) * max(0, len(images) - 32) / 32
    mib = chunks[0][0, 0].numel() * 4 * len(images) * len(views) / 2**20
    if mib > config.finetune_max_map_mib:
        raise ConfigError(f"classifier fine-tuning would cache {mib:.0f} MiB of {late0.prefix_stage} maps "
                          f"({len(images)} images x {len(views)} views), above finetune_max_map_mib "
                          f"{config.finetune_max_map_mib}: train without fine-tuning (at 80 images per class "
                          "the frozen classifier already reached 99.4 % on NEU-DET) or raise the cap")
    n_folds = min(config.finetune_folds, int(np.bincount(fs.y).min()))
    estimate = None
    if time_budget_s is not None:
        step_s = seconds_per_step(backbone, chunks[0].reshape(-1, *chunks[0].shape[2:]), stages=features.stages,
                                  config=ft, n_classes=len(fs.classes))
        estimate = maps_s + estimated_seconds(len(images), len(views), n_folds, ft, step_s)
        if estimate > time_budget_s:
            raise OverBudget(f"fine-tuning estimated at {estimate:.0f} s ({len(images)} images x {len(views)} views, "
                             f"{n_folds} folds + the final run) > its budget {time_budget_s:.0f} s")
    chunks += [chunk(images[s : s + 32]) for s in range(32, len(images), 32)]
    maps = torch.cat(chunks)
    l2 = float(frozen_report["l2"])

    def start_head(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> HeadParams:
        h = fit_head(x, y, len(fs.classes), l2=l2, max_iter=config.max_iter)
        return h.mu, h.sd, h.weight, h.bias

    result, oof_views, oof_identity = finetune_cross_validated(
        backbone, maps, fs.y, stages=features.stages, fit_head=start_head, config=ft,
        folds=stratified_folds(fs.y, n_folds, seed), seed=seed, progress=progress)
    views_below, oof, how = None, oof_views, "probabilities averaged over them"
    cascade: dict[str, Any] = {}
    if config.views_only_when_unsure and len(views) > 1:
        views_below = choose_views_below(oof_identity, oof_views, fs.y)
        oof = cascade_probs(oof_identity, oof_views, views_below)
        cascade = {"views_below": views_below,
                   "through_views_oof": float((oof_identity.max(1) < views_below).mean()),
                   "accuracy_identity_oof": float((oof_identity.argmax(1) == fs.y).mean()),
                   "accuracy_views_oof": float((oof_views.argmax(1) == fs.y).mean())}
        how = (f"one view, and every view averaged where its top probability is below {views_below:g} "
               f"({cascade['through_views_oof'] * 100:.0f} % of the images out of fold)")
    thresholds = confidence_thresholds(oof, fs.y, fs.classes, quantile=config.confidence_quantile,
                                      cap=config.max_min_confidence)
    tuned_stages = [s for s in features.stages if s in late0.taps.values()]
    report = {
        **frozen_report,
        "method": f"{list(config.stages)} GAP features, {tuned_stages} and the logistic head fine-tuned on "
                  f"{len(views)} orientation view(s); read through {how}",
        **({"views_only_when_unsure": cascade} if cascade else {}),
        "folds": n_folds,
        "frozen": {k: frozen_report[k] for k in ("method", "folds", "accuracy", "balanced_accuracy")},
        **cv_summary(oof, fs.y, fs.classes, thresholds),
        "finetune": {**ft.model_dump(mode="json"), "maps_mib": round(mib, 1),
                     **({"estimated_s": round(estimate, 1)} if estimate is not None else {})},
    }
    head = SoftmaxHead(mu=result.mu, sd=result.sd, weight=result.weight, bias=result.bias)
    pooled = PooledFeatures(result.backbone, max_value=extract.spec.max_value, pooling=features.pooling,
                            resize_to=features.resize_to)
    return ClassifierGraph(pooled, head), thresholds, report, views_below
