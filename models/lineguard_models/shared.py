"""Shared backbone pass: the classifier continues from the anomaly engine's stage map (training side).

Data flow: fitted :class:`~lineguard_models.anomaly.AnomalyScorer` + trained classifier ->
:func:`shared_stage_for` decides -> the anomaly graph is re-exported with the extra output
``shared_features`` (raw map of its deepest backbone stage; scores checked unchanged) -> the
classifier graph is exported from that map (:class:`StageMapGraph`)
-> ONNX Runtime check that ``class_probs`` from the shared path equal the image path -> manifest
entries: the classifier engine's ``input_source`` is ``anomaly:shared_features`` with its
``input_chw`` (``lineguard.bundle.EngineSpec``); the anomaly engine gains the output role
``features``.

Why: a flagged part (score >= accept threshold) runs the classifier; its backbone up to the
anomaly's deepest stage repeats work the anomaly engine has just done. Measured on ONNX Runtime CPU
(docs/benchmarks/classifier.md): about 30 % less anomaly + classifier latency per flagged part, no
cost on accepted parts.

Must never: share when the class probabilities could differ from the image path (tiled input,
view averaging, other backbone weights or normalisation, a stage before the shared one), or write
a shared bundle whose check failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lineguard.bundle import EngineSpec
from lineguard.errors import EngineError
from lineguard.preprocess import InputSpec, prepare
from lineguard_models.anomaly import AnomalyScorer
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, TrainedClassifier
from lineguard_models.classifier_graph import PROBS_OUTPUT, ClassifierGraph, export_classifier_onnx
from lineguard_models.export import SCORE_OUTPUT, SHARED_OUTPUT, export_onnx
from lineguard_models.ortscore import cpu_session

FEATURES_ROLE = "features"  # role of the shared map among the anomaly engine's outputs
PROBS_ATOL = 1e-4  # class_probs shared vs image path; float32 reorderings give ~1e-6
SCORE_RTOL = 1e-5  # anomaly scores of the re-exported graph vs the one calibration used


class StageMapGraph(nn.Module):
    """The shared-backbone graph: the anomaly engine's raw ``stage`` map [N, C, h, w] -> class_probs [N, K].

    Continues ``graph``'s own backbone after ``stage`` (``Backbone.forward_from``), then the same
    pooling and linear layer: equal to ``graph`` on the image within float rounding when the anomaly
    engine computed the map with the same backbone weights and input normalisation (checked at
    export, :func:`verify_shared`).
    """

    def __init__(self, graph: ClassifierGraph, stage: str) -> None:
        super().__init__()
        self.graph = graph
        self.stage = stage

    def forward(self, stage_map: Tensor) -> Tensor:
        feats = self.graph.features
        return F.softmax(self.graph.linear(feats.pool(feats.backbone.forward_from(stage_map, self.stage))), dim=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStage:
    """The backbone stage both engines share: its name and the map's [C, h, w] per tile."""

    stage: str
    chw: tuple[int, int, int]


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def may_share(anomaly: AnomalyScorer, config: ClassifierConfig) -> bool:
    """Whether the classifier could continue from ``anomaly``'s backbone pass, as far as that is known
    before it is trained (the same Lite0 weights, sharing on, no view averaging): such a classifier is
    trained at the anomaly input size (no ``input_px`` scaling), since the shared map sets its size."""
    bb = anomaly.features.backbone
    return (config.share_backbone and not config.average_views and isinstance(bb, EfficientNetLite0)
            and bb.variant == "efficientnet_lite0")


TILED = "the input spec is tiled: the classifier reads the top-scoring tile"


def shared_stage_for(
    anomaly: AnomalyScorer, clf: TrainedClassifier, config: ClassifierConfig, line_spec: InputSpec
) -> tuple[SharedStage | None, str]:
    """(the stage to share, or None; the reason in words). ``line_spec``: the bundle's input spec, what the
    edge feeds the anomaly engine (a tiled line's classifier was trained on single tiles, so its own spec is
    untiled). Pure apart from one probe pass."""
    if not config.share_backbone:
        return None, "share_backbone is off"
    if line_spec.tiles.count != 1:
        return None, TILED
    if len(clf.views) > 1 and clf.views_below is None:
        return None, "the classifier graph averages orientation views of the image"
    # with views_below (a views twin; a fine-tuned graph fails the same-weights check below) 'classifier' reads one
    # view and may continue the anomaly pass; 'classifier_views' reads the image for the parts it is unsure of
    a_bb, c_feats = anomaly.features.backbone, clf.graph.features
    c_bb = c_feats.backbone
    if c_feats.resize_to is not None:
        return None, f"the classifier scales the frame to {c_feats.resize_to[1]}x{c_feats.resize_to[0]} (input_px)"
    if type(a_bb) is not type(c_bb) or not _same_tensors(a_bb.state_dict(), c_bb.state_dict()):
        return None, "the engines use different backbones or weights"
    same_norm = torch.equal(anomaly.in_scale, c_feats.get_buffer("in_scale")) and torch.equal(
        anomaly.in_shift, c_feats.get_buffer("in_shift"))
    if not same_norm:
        return None, "the engines normalise the input differently"
    stage = max(anomaly.spec.stages, key=a_bb.stage_order)
    earlier = [s for s in c_feats.stages if c_bb.stage_order(s) < a_bb.stage_order(stage)]
    if earlier:
        return None, f"classifier stages {earlier} lie before the anomaly's deepest stage {stage}"
    spec = anomaly.spec
    with torch.no_grad():
        probe = anomaly.forward_with_stage(torch.zeros(1, spec.channels, spec.input_height_px,
                                                       spec.input_width_px), stage)[2]
    c, h, w = (int(d) for d in probe.shape[1:])
    return SharedStage(stage=stage, chw=(c, h, w)), f"continues from the anomaly engine's {stage} map"


def _check_batch(clf: TrainedClassifier, images: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    if not images:
        raise EngineError("the shared-backbone check needs at least one image")
    return np.concatenate([prepare(im, clf.spec)[0] for im in images]).astype(np.float32)


def verify_shared(
    clf: TrainedClassifier, *, old_anomaly: Path, new_anomaly: Path, classifier: Path,
    images: Sequence[npt.NDArray[Any]],
) -> dict[str, float]:
    """ONNX Runtime check: the new anomaly graph scores like the old one, and class_probs from its
    shared map equal the image path (torch, the single-view graph the CV measured: ``TrainedClassifier.
    exported_probs``).

    Returns the largest differences; raises :class:`EngineError` beyond tolerance.
    """
    batch = _check_batch(clf, images)
    (old_scores,) = cpu_session(old_anomaly).run([SCORE_OUTPUT], {"image": batch})
    new_scores, maps = cpu_session(new_anomaly).run([SCORE_OUTPUT, SHARED_OUTPUT], {"image": batch})
    (probs,) = cpu_session(classifier).run([PROBS_OUTPUT], {SHARED_OUTPUT: maps})
    expected = clf.exported_probs(list(images))
    score_rel = float(np.max(np.abs(new_scores - old_scores) / np.maximum(np.abs(old_scores), 1e-12)))
    probs_abs = float(np.max(np.abs(probs - expected)))
    if score_rel > SCORE_RTOL:
        raise EngineError(f"the anomaly graph with the shared output scores differently (relative {score_rel:.2g} "
                          f"> {SCORE_RTOL}): a bug; retrain with ClassifierConfig(share_backbone=False)")
    if probs_abs > PROBS_ATOL:
        raise EngineError(f"class_probs from the shared map differ from the image path by {probs_abs:.2g} "
                          f"(> {PROBS_ATOL}): a bug; retrain with ClassifierConfig(share_backbone=False)")
    return {"max_score_rel_diff": score_rel, "max_probs_abs_diff": probs_abs}


def export_shared(
    clf: TrainedClassifier, anomaly: AnomalyScorer, shared: SharedStage, *, anomaly_onnx: Path,
    classifier_onnx: Path, check_images: Sequence[npt.NDArray[Any]],
) -> tuple[EngineSpec, dict[str, float]]:
    """Re-export ``anomaly_onnx`` with the shared output, export the stage-map classifier, verify both."""
    fresh = anomaly_onnx.with_name(f".{anomaly_onnx.name}.shared")
    try:
        export_onnx(anomaly, fresh, shared_stage=shared.stage)
        graph = StageMapGraph(clf.graph, shared.stage).eval()
        export_classifier_onnx(graph, classifier_onnx, spec=clf.spec, input_name=SHARED_OUTPUT,
                               example=torch.zeros(1, *shared.chw))
        diffs = verify_shared(clf, old_anomaly=anomaly_onnx, new_anomaly=fresh, classifier=classifier_onnx,
                              images=check_images)
        os.replace(fresh, anomaly_onnx)
    except BaseException:
        fresh.unlink(missing_ok=True)
        classifier_onnx.unlink(missing_ok=True)
        raise
    engine = EngineSpec(file=classifier_onnx.name, input_name=SHARED_OUTPUT, outputs={"probs": PROBS_OUTPUT},
                        input_source=f"anomaly:{SHARED_OUTPUT}", input_chw=shared.chw)
    return engine, diffs


def export_for_bundle(
    clf: TrainedClassifier, classifier_onnx: Path, *, config: ClassifierConfig, anomaly: AnomalyScorer | None,
    anomaly_onnx: Path | None, check_images: Sequence[npt.NDArray[Any]], progress: Callable[[str], None],
    line_spec: InputSpec,
) -> tuple[EngineSpec, dict[str, str], dict[str, Any]]:
    """Export the classifier, shared with the anomaly engine where that applies (``line_spec``: the bundle's
    input spec).

    Returns (classifier engine entry, extra anomaly output roles, report section).
    """
    if anomaly is None or anomaly_onnx is None:
        shared, why = None, "no anomaly graph given"
    else:
        shared, why = shared_stage_for(anomaly, clf, config, line_spec)
    if shared is None or anomaly is None or anomaly_onnx is None:
        progress(f"classifier reads the image (no shared backbone pass: {why})")
        return clf.export_onnx(classifier_onnx), {}, {"shared": False, "reason": why}
    engine, diffs = export_shared(clf, anomaly, shared, anomaly_onnx=anomaly_onnx, classifier_onnx=classifier_onnx,
                                  check_images=check_images)
    progress(f"classifier shares the backbone pass: {why} {list(shared.chw)} (class_probs within "
             f"{diffs['max_probs_abs_diff']:.1g} of the image path)")
    return engine, {FEATURES_ROLE: SHARED_OUTPUT}, {
        "shared": True, "stage": shared.stage, "input_chw": list(shared.chw), **diffs}
