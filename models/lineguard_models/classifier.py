"""Few-shot defect classifier: frozen pretrained backbone, multi-scale pooled features, softmax head.

Data flow (training side): defect images by class (raw camera units) -> physically plausible
augmentation (``lineguard_models.augment``, camera profile): the orientation views the profile
allows (flips, 90-degree turns; ``lineguard_models.views``) of every image plus photometric copies
-> shared preprocessing (``lineguard.preprocess.prepare``, the same input spec as the anomaly
engine) -> frozen backbone -> global-average-pooled features of several stages -> standardise ->
class-balanced multinomial logistic regression -> ``class_probs``. Stratified cross-validation
(views and copies of a held-out image never train its fold) picks the L2 strength and gives
out-of-fold probabilities; each class's ``min_confidence`` is a low quantile of its correct-class
out-of-fold probability, so the edge reports ``unknown`` for a frame no known class explains as
well as its own examples.

Why this method (``docs/classifier.md``): pooled multi-scale features + logistic head beat the plain
head-feature probe and train in about a minute on 2 CPU cores. Option ``ClassifierConfig.finetune``:
stage6 and the head fine-tuned on every orientation view (``lineguard_models.finetune``), the views
averaged where one is unsure; the per-line choice also tries it (``tuner``,
``classifier_select.consider_finetuning``) and keeps it only where cross-validation says it pays.

Exported graph (``export_onnx``): input ``image`` [N, C, H, W] float32 raw units -> /max_value,
mono -> 3 channels, backbone normalisation -> backbone -> pooled features -> head -> softmax
-> output ``class_probs`` [N, n_classes]; with ``average_views`` the graph runs the N x V views
as one batch and outputs the mean of their probabilities (same input, same output). In a bundle
where the classifier shares the anomaly engine's backbone pass (``lineguard_models.shared``,
``ClassifierConfig.share_backbone``), the exported graph is ``shared.StageMapGraph`` instead: input
``shared_features`` (the anomaly graph's stage4 map), the rest of the backbone, the same pooling
(``PooledFeatures.pool``) and head. Must never:
train on a class with fewer than :data:`MIN_IMAGES_PER_CLASS` images, or export a graph whose
class order differs from ``classes``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from lineguard.bundle import ClassifierSpec, EngineSpec
from lineguard.errors import ConfigError, DatasetError
from lineguard.preprocess import InputSpec, prepare
from lineguard_models.augment import CameraProfile, augment
from lineguard_models.backbone import Backbone, EfficientNetLite0
from lineguard_models.classifier_curve import curve_for
from lineguard_models.classifier_features import FeatureSet, Image, ProgressFn, build_features
from lineguard_models.classifier_finetuned import finetuned
from lineguard_models.classifier_graph import (
    INPUT_NAME,
    PROBS_OUTPUT,
    ClassifierGraph,
    PooledFeatures,
    classifier_resize,
    export_classifier_onnx,
)
from lineguard_models.classifier_head import (
    SoftmaxHead,
    confidence_thresholds,
    cv_folds,
    cv_summary,
    fit_head,
)
from lineguard_models.data import Dataset
from lineguard_models.finetune import FinetuneConfig, cascade_probs
from lineguard_models.views import IDENTITY, ViewAveraged, Views

log = logging.getLogger(__name__)

MIN_IMAGES_PER_CLASS = 5
WARN_IMAGES_PER_CLASS = 15


def too_few_defects(counts: Mapping[str, int]) -> str | None:
    """Why ``lineguard train`` trains no classifier on defect classes of these sizes (fewer than 2
    classes, or one below ``MIN_IMAGES_PER_CLASS``), or None when it does."""
    if len(counts) < 2:
        return f"it needs at least 2 defect classes, got {sorted(counts)}"
    small = {c: n for c, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if not small:
        return None
    listing = ", ".join(f"'{c}' has {n} image{'s' if n != 1 else ''}" for c, n in sorted(small.items()))
    return f"{listing}; each class needs at least {MIN_IMAGES_PER_CLASS} images to train and cross-validate"



class ClassifierConfig(BaseModel):
    """Classifier training settings; the defaults are the measured choice (docs/classifier.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: tuple[str, ...] = Field(
        ("stage5", "stage6"), min_length=1, max_length=7,
        description="backbone stages whose global-average-pooled features feed the head (stage5+6 beat "
        "stage5+6+7 at 20, 40 and 80 images per class on NEU-DET; docs/benchmarks/classifier.md)",
    )
    pooling: Literal["mean", "mean_gem"] = Field(
        "mean_gem", description="how each stage map becomes features: 'mean' (global average) or 'mean_gem' "
        "(average and generalised mean, p = 3, side by side: leans towards the strongest responses, where a "
        "small defect is; quality suite mean +1.7 points at 10-20 labelled per class, "
        "docs/benchmarks/quality-classifier.md)",
    )
    l2_grid: tuple[float, ...] = Field(
        (1e-5, 1e-4, 1e-3, 1e-2), min_length=1, max_length=8,
        description="L2 strengths tried by cross-validation (per mean squared weight); the lowest out-of-fold "
        "log-loss wins, ties go to the stronger",
    )
    cv_folds: int = Field(5, ge=2, le=10, description="stratified folds (fewer when a class is smaller)")
    confidence_quantile: float = Field(
        0.05, ge=0.0, le=0.5,
        description="min_confidence = this quantile of the class's out-of-fold correct-class probability",
    )
    max_min_confidence: float = Field(
        0.9, ge=0.0, le=1.0, description="upper cap of min_confidence (keeps known defects from 'unknown')"
    )
    orientation_views: bool = Field(
        True, description="train on every orientation view (flip, 90-degree turn) the camera profile "
        "allows, as copies in feature space; an orientation_specific profile allows none. Where the line "
        "declared no camera profile, the per-line choice (select) also tries every flip and 90-degree turn "
        "as copies and keeps them only if cross-validation says so (views candidates)",
    )
    average_views: bool = Field(
        False, description="the exported graph averages class_probs over those views (test-time "
        "averaging): one backbone pass per view for every classified part; off by default, it did "
        "not raise NEU-DET accuracy (docs/classifier.md)",
    )
    share_backbone: bool = Field(
        True, description="when the input spec is untiled, views are not averaged and every classifier stage "
        "lies at or after the anomaly model's deepest stage (same backbone weights), the classifier graph "
        "takes the anomaly engine's map of that stage instead of the image, so a flagged part runs the "
        "backbone once (measured ~30 % less anomaly + classifier latency, docs/classifier.md); false = "
        "the classifier always runs the backbone from the image",
    )
    input_px: int | None = Field(
        224, ge=32, le=4096, description="the classifier's backbone sees the frame scaled down inside its graph so "
        "the shorter side is this many pixels (aspect kept, never scaled up): the recipe and its figures are "
        "from 224 px (docs/benchmarks/quality-classifier.md), and at a 288 px anomaly input the classifier "
        "cost 1.6x more per flagged part (docs/classifier.md). Not applied when the backbone pass is shared "
        "(the anomaly engine's stage map sets the size). None = the anomaly input size",
    )
    batch_size: int = Field(16, ge=1, le=512, description="images per backbone forward pass")
    max_iter: int = Field(200, ge=10, le=5000, description="L-BFGS iterations for the head")
    finetune: FinetuneConfig | None = Field(None, description="after the frozen fit, fine-tune the late stage(s) "
                                            "and the head on every orientation view (needs average_views; "
                                            "docs/classifier.md): finetune_folds + 1 more runs, no shared backbone "
                                            "pass. None = frozen backbone (the default)")
    views_only_when_unsure: bool = Field(True, description="with finetune: the bundle's classifier reads one view, "
                                         "and a second engine averaged over every view runs only below a top "
                                         "probability chosen out of fold (docs/classifier.md); false = every view "
                                         "for every classified part")
    finetune_folds: int = Field(3, ge=2, le=10, description="folds of the fine-tuned model's cross-validation "
                                "(accuracy report and min_confidence; fewer when a class is smaller)")
    finetune_max_map_mib: float = Field(2048.0, gt=0.0, le=1 << 20, description="memory cap of the cached prefix "
                                        "maps of every view of every image; above it training stops with the numbers "
                                        "(use fewer images or views, or no fine-tuning)")
    finetune_candidate: FinetuneConfig | None = Field(
        FinetuneConfig(), description="the fine-tuning recipe the per-line choice (select) also tries where the line "
        "has at least finetune_candidate_min_per_class images in every class and orientation views are allowed "
        "(the declared profile's, else every flip and 90-degree turn), within finetune_candidate_budget_s and the "
        "flagged-part latency budget; kept only if its cross-validated accuracy beats the frozen choice's by one "
        "image or more. None = never tried",
    )
    finetune_candidate_min_per_class: int = Field(
        30, ge=2, le=100000, description="fine-tuning is tried only from this many images in the smallest class "
        "(at 10-20 per class cross-validation never kept it on the classifier suite's splits, and held out it was "
        "worse on 4 of 6; docs/classifier.md)",
    )
    finetune_candidate_budget_s: float = Field(
        600.0, gt=0.0, le=86400.0, description="seconds the per-line choice may take with the fine-tuning candidate: "
        "the frozen candidates' time counts against it, and the candidate runs only if its estimate (its prefix "
        "maps and every training step, from one measured step) fits what is left; else it is skipped with the "
        "estimate in the report. Automatic configuration caps it to what its search left",
    )
    select: bool = Field(
        True, description="choose the pooled stages and the photometric copies per line by cross-validation on "
        "its own labelled images (lineguard_models.classifier_select; the candidates' CV figures go into the "
        "report; applied by lineguard train through classifier_bundle); false = exactly `stages` and the "
        "profile's copies. Not with finetune or a given backbone",
    )
    views_when_unsure: bool = Field(True, description="with select and no camera profile declared: each views "
                                    "candidate also gets a twin read through every view averaged where one view is "
                                    "unsure (engine classifier_views), judged by the same cross-validation "
                                    "(docs/classifier.md: the suite's named right 91.2 -> 92.1 %)")
    select_time_budget_s: float = Field(
        300.0, gt=0.0, le=86400.0, description="time for the selection's feature pass and cross-validations; "
        "candidates left when it is spent are skipped (the default always runs)",
    )
    learning_curve: bool = Field(True, description="report the learning curve: out-of-fold accuracy on 40, 60 and 80 % "
                                 "of each class, the accuracy to expect and the images per class 90 / 95 / 99 % "
                                 "would need (lineguard_models.classifier_curve; docs/classifier.md)")
    select_latency_budget_ms: float = Field(
        40.0, gt=0.0, le=10000.0, description="candidates whose measured classifier latency per flagged part "
        "(p50, this CPU class) is above this are not considered",
    )

    @property
    def selects_per_line(self) -> bool:
        """Whether training chooses the recipe per line (``select``; never with fine-tuning)."""
        return self.select and self.finetune is None

    @model_validator(mode="before")
    @classmethod
    def _finetune_pools_by_mean(cls, data: Any) -> Any:
        """The fine-tuned graph (``finetune.py``) pools by the average: that is its default pooling."""
        if isinstance(data, dict) and data.get("finetune") is not None and "pooling" not in data:
            return {**data, "pooling": "mean"}
        return data

    @model_validator(mode="after")
    def _finetune_needs_averaging(self) -> ClassifierConfig:
        if self.finetune is not None and self.pooling != "mean":
            raise ValueError("finetune pools by the average: pooling must be 'mean' with finetune")
        if self.finetune is not None and not self.average_views:
            raise ValueError("finetune needs average_views: true (the fine-tuned model is trained on every view; "
                             "read through one view it measured below the frozen classifier, "
                             "docs/benchmarks/classifier.md)")
        return self


# ---------------------------------------------------------------------------------- features


class FeatureExtractor:
    """Frozen backbone features of raw images, through the shared preprocessing."""

    def __init__(self, *, features: PooledFeatures, spec: InputSpec, batch_size: int = 16) -> None:
        self.features = features.eval()
        self.spec = spec
        self.batch_size = batch_size

    @classmethod
    def from_config(
        cls, spec: InputSpec, config: ClassifierConfig, *, backbone: Backbone | None = None
    ) -> FeatureExtractor:
        """Load the ImageNet backbone (file I/O here) unless one with the configured stages is given."""
        if spec.tiles.count != 1:
            raise ConfigError(
                f"the classifier needs one engine input per frame; the input spec has "
                f"{spec.tiles.rows}x{spec.tiles.cols} tiles (train the classifier on an untiled spec)"
            )
        if backbone is None:
            backbone = EfficientNetLite0.from_state_dict_file(out_stages=config.stages)
        elif tuple(backbone.out_stages) != tuple(config.stages):
            raise ConfigError(f"backbone returns stages {backbone.out_stages}, classifier wants {config.stages}")
        return cls(features=PooledFeatures(backbone, max_value=spec.max_value, pooling=config.pooling,
                                           resize_to=classifier_resize(spec, config.input_px)),
                   spec=spec, batch_size=config.batch_size)

    def __call__(self, images: Sequence[Image], view: str = "identity") -> npt.NDArray[np.float32]:
        """Features [N, D] of ``images`` seen in orientation ``view`` (``lineguard_models.views``)."""
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                batch = np.concatenate([prepare(im, self.spec)[0] for im in images[s : s + self.batch_size]])
                out.append(self.features(Views.apply(view, torch.from_numpy(batch))).numpy())
        if not out:
            return np.zeros((0, self.features.out_dim), np.float32)
        return np.concatenate(out).astype(np.float32)


def check_class_sizes(images_by_class: Mapping[str, Sequence[Image]]) -> list[str]:
    """Refuse unusable class folders (:func:`too_few_defects`); return warnings for small ones."""
    if why := too_few_defects({c: len(v) for c, v in images_by_class.items()}):
        raise DatasetError(f"the defect classifier cannot be trained: {why} (collect more or remove the folder)")
    return [
        f"class '{c}' has only {len(v)} images: below {WARN_IMAGES_PER_CLASS} the accuracy and the "
        "confidence threshold are rough; collect more"
        for c, v in sorted(images_by_class.items()) if len(v) < WARN_IMAGES_PER_CLASS
    ]


# ------------------------------------------------------------------- cross-validation, thresholds


def out_of_fold_probs(
    fs: FeatureSet, folds: npt.NDArray[np.int64], *, l2: float, max_iter: int
) -> npt.NDArray[np.float32]:
    """Probabilities of every original image from a head that never saw it (nor its copies)."""
    k = len(fs.classes)
    oof = np.zeros((len(fs.y), k), np.float32)
    for f in np.unique(folds):
        train = np.flatnonzero(folds != f)
        x, y = fs.training_rows(train)
        head = fit_head(x, y, k, l2=l2, max_iter=max_iter)
        test = np.flatnonzero(folds == f)
        oof[test] = fs.probs(head, test)
    return oof


def fit_from_features(
    fs: FeatureSet, *, config: ClassifierConfig, seed: int, progress: ProgressFn | None = None
) -> tuple[SoftmaxHead, dict[str, float], dict[str, Any]]:
    """Cross-validate the L2 strength, derive thresholds, fit the final head on everything."""
    folds = cv_folds(fs.y, config.cv_folds, seed)
    n_folds = len(np.unique(folds))
    scores, oofs = {}, {}
    for i, l2 in enumerate(config.l2_grid):
        oof = out_of_fold_probs(fs, folds, l2=l2, max_iter=config.max_iter)
        # log-loss, not accuracy: with few images accuracy ties; calibrated probabilities matter here
        scores[l2] = float(-np.log(np.clip(oof[np.arange(len(fs.y)), fs.y], 1e-7, 1.0)).mean())
        oofs[l2] = oof
        if progress is not None:
            progress("classifier cross-validation", (i + 1) / len(config.l2_grid))
    best = min(config.l2_grid, key=lambda v: (round(scores[v], 4), -v))  # ties -> stronger L2
    thresholds = confidence_thresholds(oofs[best], fs.y, fs.classes, quantile=config.confidence_quantile,
                                      cap=config.max_min_confidence)
    report = {
        "method": f"logistic head on {config.pooling}-pooled features of {list(config.stages)} "
                  "(frozen ImageNet backbone)",
        "folds": n_folds,
        "l2": best,
        "cv_log_loss": {str(k): round(v, 4) for k, v in scores.items()},
        **cv_summary(oofs[best], fs.y, fs.classes, thresholds),
        "augmented_rows": len(fs.x_aug),
        "view_rows": 0 if fs.x_views is None else int(fs.x_views.shape[0] * fs.x_views.shape[1]),
        "views_averaged": fs.average_views,
    }
    x, y = fs.training_rows(np.arange(len(fs.y)))
    head = fit_head(x, y, len(fs.classes), l2=best, max_iter=config.max_iter)
    return head, thresholds, report


# ----------------------------------------------------------------------------- result, export


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedClassifier:
    """A fitted classifier ready to export; ``classes`` is the order of ``class_probs``."""

    classes: tuple[str, ...]
    min_confidence: dict[str, float]
    cv_report: dict[str, Any]
    graph: ClassifierGraph
    spec: InputSpec
    profile: CameraProfile
    views: Views = IDENTITY  # averaged by the exported graph (by the views graph with views_below)
    # views only where needed: the exported graph reads one view and ``views_graph`` (every view averaged)
    # runs where its top probability is below this (the bundle's 'classifier_views' engine)
    views_below: float | None = None
    warnings: tuple[str, ...] = field(default=())

    def exported_graph(self) -> nn.Module:
        """The torch module that is exported: ``graph`` averaged over ``views`` (one view with views_below)."""
        return ViewAveraged(self.graph, IDENTITY if self.views_below is not None else self.views).eval()

    def views_graph(self) -> nn.Module | None:
        """The graph run only below ``views_below`` (every view averaged), or None."""
        return ViewAveraged(self.graph, self.views).eval() if self.views_below is not None else None

    def exported_probs(self, images: Sequence[Image]) -> npt.NDArray[np.float32]:
        """class_probs of raw images from the 'classifier' engine's graph alone (torch; one view with views_below)."""
        return _probs_of(self.exported_graph(), images, self.spec)

    def predict_proba(self, images: Sequence[Image]) -> npt.NDArray[np.float32]:
        """class_probs of raw images as the edge computes them from the exported graphs (torch, for checks)."""
        probs = self.exported_probs(images)
        if self.views_below is None:
            return probs
        every = _probs_of(ViewAveraged(self.graph, self.views).eval(), images, self.spec)
        return cascade_probs(probs, every, self.views_below)

    def export_onnx(self, path: Path) -> EngineSpec:
        """Write the ONNX graph; returns the bundle engine entry (file name relative to its folder)."""
        return _export(self.exported_graph(), Path(path), self.spec)

    def export_views_onnx(self, path: Path) -> EngineSpec | None:
        """Write the views graph (with ``views_below``); returns its engine entry, or None."""
        views = self.views_graph()
        return _export(views, Path(path), self.spec) if views is not None else None

    def classifier_spec(self) -> ClassifierSpec:
        """The manifest's ``classifier`` section."""
        return ClassifierSpec(classes=list(self.classes), min_confidence=dict(self.min_confidence),
                              camera_profile=self.profile.model_dump(mode="json"), views_below=self.views_below)


def _probs_of(graph: nn.Module, images: Sequence[Image], spec: InputSpec) -> npt.NDArray[np.float32]:
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), 16):
            batch = np.concatenate([prepare(im, spec)[0] for im in images[s : s + 16]])
            out.append(graph(torch.from_numpy(batch)).numpy())
    return np.concatenate(out).astype(np.float32)


def _export(graph: nn.Module, path: Path, spec: InputSpec) -> EngineSpec:
    export_classifier_onnx(graph, path, spec=spec)
    return EngineSpec(file=path.name, input_name=INPUT_NAME, outputs={"probs": PROBS_OUTPUT})


def training_views(
    profile: CameraProfile | None, spec: InputSpec, config: ClassifierConfig,
) -> tuple[Views, Views | None]:
    """(the orientation views every classifier candidate trains on, the views the per-line choice may add).

    A declared ``profile`` decides alone (none where orientation matters). Without one (None: ``lineguard
    train`` without ``--camera-profile``) whether orientation matters is unknown: the per-line choice
    (``config.selects_per_line``) also tries every flip and 90-degree turn the input allows (the views
    candidates of ``classifier_select``) and cross-validation decides.
    """
    if not config.orientation_views:
        return IDENTITY, None
    if profile is not None:
        return Views.for_camera(profile, spec), None
    free = Views.for_profile(flips=("horizontal", "vertical"), rotate_90=True,
                             square=spec.input_width == spec.input_height)
    return IDENTITY, free if config.selects_per_line else None


def train_classifier(
    images_by_class: Mapping[str, Sequence[Image]],
    *,
    spec: InputSpec,
    profile: CameraProfile | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    config: ClassifierConfig | None = None,
    backbone: Backbone | None = None,
    selector: Callable[..., Any] | None = None,
    tuner: Callable[..., Any] | None = None,
) -> TrainedClassifier:
    """Train the defect classifier on raw images (the layout ``Dataset.load`` returns).

    ``selector`` (``classifier_select.select_and_fit``) chooses stages and copies by cross-validation
    when ``config.select`` is on; without it the configured stages are used as they are. ``tuner``
    (``classifier_select.consider_finetuning``) then tries the fine-tuning candidate
    (``config.finetune_candidate``) against the frozen choice.

    ``profile`` defaults to :meth:`CameraProfile.conservative_for` the spec. Raises
    :class:`DatasetError` for fewer than 2 classes or a class below :data:`MIN_IMAGES_PER_CLASS`.
    """
    config = config or ClassifierConfig()
    warnings_ = check_class_sizes(images_by_class)
    for w in warnings_:
        log.warning("%s", w)
    views, free = training_views(profile, spec, config)
    declared, spent_s = views, 0.0
    profile = profile or CameraProfile.conservative_for(spec)
    profile.verify_matches(spec)
    torch.manual_seed(seed)
    extract = FeatureExtractor.from_config(spec, config, backbone=backbone)

    def plausible(im: Image, rng: np.random.Generator) -> Image:
        return augment(im, profile, rng)

    if selector is not None and config.selects_per_line and backbone is None:
        # issue 16: the per-line choice (classifier_select.select_and_fit, passed in by the caller
        # above this module: classifier_bundle, so the import graph keeps one direction)
        t_select = time.perf_counter()
        extract, fs, head, thresholds, report = selector(
            images_by_class, spec=spec, config=config, plausible=plausible, copies=profile.copies_per_image,
            views=views, seed=seed, progress=progress, free_views=free)
        views = Views(names=tuple(report["selection"]["views"]))  # what the chosen candidate trained on
        views_below = report["selection"].get("views_below")  # a views twin: every view only where unsure
        spent_s = time.perf_counter() - t_select
    else:
        views_below = None
        fs = build_features(images_by_class, extract, augment_fn=plausible, copies=profile.copies_per_image,
                            seed=seed, progress=progress, views=views, average_views=config.average_views)
        head, thresholds, report = fit_from_features(fs, config=config, seed=seed, progress=progress)
    # what labelling more would buy (classifier_curve), from the frozen choice; its time counts against fine-tuning's
    t_curve = time.perf_counter()
    curve = (curve_for(fs, report, n_folds=config.cv_folds, max_iter=config.max_iter, seed=seed)
             if config.learning_curve else None)
    spent_s += time.perf_counter() - t_curve
    graph = ClassifierGraph(extract.features, head)
    averaged = views if fs.average_views or views_below is not None else IDENTITY
    if config.finetune is not None:
        graph, thresholds, report, views_below = finetuned(images_by_class, fs, extract, views, report,
                                                            config=config, seed=seed, progress=progress)
    elif tuner is not None and config.finetune_candidate is not None and "selection" in report:
        tune_views = declared if len(declared) > 1 else free or IDENTITY  # CV guards orientation-tied classes
        tune_cfg = config.model_copy(update={"finetune": config.finetune_candidate, "pooling": "mean",
                                             "average_views": True})
        # the extractor (a backbone file read) is built only if the candidate gets past its cheap checks
        tuned = tuner(images_by_class, fs, functools.partial(FeatureExtractor.from_config, spec, tune_cfg),
                      tune_views, report, config=tune_cfg, seed=seed, progress=progress, spent_s=spent_s)
        if tuned is not None:
            graph, thresholds, report, views_below = tuned
            views = averaged = tune_views
    report["warnings"], report["learning_curve"] = warnings_, curve
    report["augmentation"] = {"copies_per_image": profile.copies_per_image, "views": list(views.names)}
    log.info("classifier: %d classes, CV accuracy %.3f (balanced %.3f), l2=%g", len(fs.classes),
             report["accuracy"], report["balanced_accuracy"], report["l2"])
    return TrainedClassifier(classes=fs.classes, min_confidence=thresholds, cv_report=report,
                             graph=graph, spec=spec, profile=profile,
                             views=averaged, views_below=views_below,
                             warnings=tuple(warnings_))


def defect_images(dataset: Dataset) -> dict[str, list[Image]]:
    """Every defect image of a scanned dataset (all splits), by class, in the dataset's pixel format."""
    return {c: [dataset.load(s) for s in dataset.defects(c)] for c in dataset.defect_classes}
