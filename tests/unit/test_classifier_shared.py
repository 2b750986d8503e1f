"""Shared backbone pass, torch side: the split backbone equals the whole one, and the decision.

``EfficientNetLite0.forward_from`` continued from the anomaly scorer's stage4 map must give the
classifier's stages bit for bit; ``StageMapGraph`` must give the image graph's class_probs; and
``shared_stage_for`` shares only where that holds (untiled, no view averaging, same weights and
normalisation, classifier stages at or after the anomaly's deepest).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lineguard.errors import ConfigError
from lineguard.preprocess import InputSpec, TileSpec
from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import (
    ClassifierConfig,
    ClassifierGraph,
    PooledFeatures,
    TrainedClassifier,
)
from lineguard_models.classifier_head import SoftmaxHead
from lineguard_models.shared import StageMapGraph, shared_stage_for
from lineguard_models.views import Views

SPEC = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=96)
CLF_STAGES = ("stage5", "stage6", "stage7")


@pytest.fixture(scope="module")
def anomaly() -> AnomalyScorer:
    bb = EfficientNetLite0.from_state_dict_file(out_stages=("stage3", "stage4"))
    spec = ScorerSpec(input_height_px=96, input_width_px=64, channels=1, max_value=255.0, stages=("stage3", "stage4"),
                      neighbourhood_cells=3, projection_dim=None, projection_seed=0, blur_sigma_px=1.0,
                      image_score="map_max")
    return AnomalyScorer(bb, torch.randn(16, 40 + 80, generator=torch.Generator().manual_seed(0)), spec).eval()


def _classifier(stages: tuple[str, ...] = CLF_STAGES, spec: InputSpec = SPEC,
                backbone: EfficientNetLite0 | None = None, pooling: str = "mean") -> TrainedClassifier:
    bb = backbone or EfficientNetLite0.from_state_dict_file(out_stages=stages)
    feats = PooledFeatures(bb, max_value=spec.max_value, pooling=pooling)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    head = SoftmaxHead(mu=rng.normal(size=feats.out_dim).astype(np.float32),
                       sd=rng.uniform(0.5, 2.0, feats.out_dim).astype(np.float32),
                       weight=(0.02 * rng.normal(size=(feats.out_dim, 3))).astype(np.float32),  # unsaturated
                       bias=np.zeros(3, np.float32))
    return TrainedClassifier(classes=("a", "b", "c"), min_confidence={"a": 0.5, "b": 0.5, "c": 0.5}, cv_report={},
                             graph=ClassifierGraph(feats, head).eval(), spec=spec,
                             profile=CameraProfile.conservative_for(spec))


@pytest.fixture(scope="module")
def clf() -> TrainedClassifier:
    return _classifier()


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 96, 64, generator=torch.Generator().manual_seed(2)) * 255.0


def test_forward_from_the_stage4_map_equals_the_whole_backbone(anomaly: AnomalyScorer, clf: TrainedClassifier) -> None:
    x = _images()
    with torch.no_grad():
        stage4 = anomaly.forward_with_stage(x, "stage4")[2]
        norm = x * clf.graph.features.get_buffer("in_scale") + clf.graph.features.get_buffer("in_shift")
        whole = clf.graph.features.backbone(norm)
        resumed = clf.graph.features.backbone.forward_from(stage4, "stage4")
    assert stage4.shape == (3, 80, 6, 4)
    for s in CLF_STAGES:
        assert torch.equal(whole[s], resumed[s]), s


def test_stage_map_graph_gives_the_image_graphs_class_probs(anomaly: AnomalyScorer, clf: TrainedClassifier) -> None:
    x = _images()
    with torch.no_grad():
        score, amap = anomaly(x)
        s2, m2, stage4 = anomaly.forward_with_stage(x, "stage4")
        from_image = clf.graph(x)
        from_map = StageMapGraph(clf.graph, "stage4")(stage4)
    assert torch.equal(score, s2) and torch.equal(amap, m2)  # the extra output leaves the scores alone
    assert torch.allclose(from_map, from_image, atol=1e-6)
    assert not torch.allclose(from_image[0], from_image[1], atol=1e-3)  # not a constant head


def test_mean_gem_pooling_is_the_average_and_the_generalised_mean_of_each_stage(anomaly: AnomalyScorer) -> None:
    clf = _classifier(pooling="mean_gem")
    feats = clf.graph.features
    x = _images()
    with torch.no_grad():
        maps = feats.backbone(x * feats.get_buffer("in_scale") + feats.get_buffer("in_shift"))
        pooled = feats(x)
        from_map = StageMapGraph(clf.graph, "stage4")(anomaly.forward_with_stage(x, "stage4")[2])
        from_image = clf.graph(x)
    assert pooled.shape == (3, feats.out_dim) and feats.out_dim == 2 * (112 + 192 + 320)  # [mean, gem] per stage
    start = 0
    for s in CLF_STAGES:
        m = maps[s].numpy()
        c = m.shape[1]
        want_gem = np.mean(np.maximum(m, 1e-6) ** 3, axis=(2, 3)) ** (1 / 3)
        assert np.allclose(pooled[:, start : start + c].numpy(), m.mean(axis=(2, 3)), atol=1e-5), s
        assert np.allclose(pooled[:, start + c : start + 2 * c].numpy(), want_gem, rtol=1e-4, atol=1e-5), s
        assert (want_gem >= m.mean(axis=(2, 3)) - 1e-5).all()  # p = 3 leans above the average
        start += 2 * c
    assert torch.allclose(from_map, from_image, atol=1e-6)  # the shared pass pools the same way


def test_forward_from_refuses_a_stage_before_the_one_given() -> None:
    bb = EfficientNetLite0(out_stages=("stage3", "stage5"))
    with pytest.raises(ConfigError, match="come before stage4"):
        bb.forward_from(torch.zeros(1, 80, 4, 4), "stage4")


def test_shared_when_untiled_and_stages_continue(anomaly: AnomalyScorer, clf: TrainedClassifier) -> None:
    shared, why = shared_stage_for(anomaly, clf, ClassifierConfig(), SPEC)
    assert shared is not None and shared.stage == "stage4" and shared.chw == (80, 6, 4), why


def test_not_shared_when_switched_off_tiled_or_views_averaged(anomaly: AnomalyScorer, clf: TrainedClassifier) -> None:
    assert shared_stage_for(anomaly, clf, ClassifierConfig(share_backbone=False), SPEC) == (
        None, "share_backbone is off")
    tiled_line = SPEC.model_copy(update={"tiles": TileSpec(rows=2, cols=1)})  # the classifier then reads a tile
    assert shared_stage_for(anomaly, clf, ClassifierConfig(), tiled_line)[1] == (
        "the input spec is tiled: the classifier reads the top-scoring tile")
    views = Views.for_profile(flips=("horizontal",), rotate_90=False, square=False)
    averaged = dataclasses.replace(clf, views=views)
    why = "the classifier graph averages orientation views of the image"
    assert shared_stage_for(anomaly, averaged, ClassifierConfig(), SPEC) == (None, why)
    # a views twin: 'classifier' reads one view and may continue the anomaly pass ('classifier_views' reads the
    # image, only for the parts that view is unsure of)
    twin = dataclasses.replace(clf, views=views, views_below=0.8)
    assert shared_stage_for(anomaly, twin, ClassifierConfig(), SPEC) == shared_stage_for(anomaly, clf,
                                                                                       ClassifierConfig(), SPEC)
    assert shared_stage_for(anomaly, clf, ClassifierConfig(), SPEC)[0] is not None


def test_not_shared_with_other_weights_normalisation_or_earlier_stages(anomaly: AnomalyScorer) -> None:
    other = EfficientNetLite0.from_state_dict_file(out_stages=CLF_STAGES)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert "different backbones or weights" in shared_stage_for(anomaly, _classifier(backbone=other),
                                                                ClassifierConfig(), SPEC)[1]
    twelve_bit = SPEC.model_copy(update={"max_value": 4095, "dtype": "uint16"})
    assert "normalise the input differently" in shared_stage_for(anomaly, _classifier(spec=twelve_bit),
                                                                 ClassifierConfig(), twelve_bit)[1]
    shallow = _classifier(stages=("stage3", "stage6"))
    assert "['stage3'] lie before" in shared_stage_for(anomaly, shallow, ClassifierConfig(), SPEC)[1]
