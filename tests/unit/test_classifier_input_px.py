"""The classifier's own input size (``ClassifierConfig.input_px``): the frame is scaled inside the graph.

A 288 px anomaly input would otherwise make every flagged part run the classifier's backbone at 288
px (1.6x the work of the 224 px its recipe was chosen at). The scaling must happen inside the exported
graph, identically in training (torch) and serving (ONNX Runtime), and must not be applied where the
classifier continues from the anomaly engine's stage map (that map sets the size).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineguard.preprocess import InputSpec
from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, FeatureExtractor, train_classifier
from lineguard_models.classifier_graph import PooledFeatures, classifier_resize
from lineguard_models.ortscore import cpu_session
from lineguard_models.shared import may_share, shared_stage_for

SPEC = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=96, input_height=96)


def _spec(h: int, w: int) -> InputSpec:
    return InputSpec(channels=1, dtype="uint8", max_value=255, input_width=w, input_height=h)


@pytest.mark.parametrize(("hw", "px", "want"), [
    ((288, 288), 224, (224, 224)),
    ((300, 600), 224, (224, 448)),  # aspect kept, shorter side to input_px
    ((600, 300), 150, (300, 150)),
    ((224, 544), 224, None),  # shorter side already there
    ((200, 200), 224, None),  # never scaled up
    ((288, 288), None, None),
])
def test_classifier_resize(hw: tuple[int, int], px: int | None, want: tuple[int, int] | None) -> None:
    assert classifier_resize(_spec(*hw), px) == want


def test_the_backbone_sees_the_scaled_frame() -> None:
    bb = EfficientNetLite0.from_state_dict_file(out_stages=("stage5",))
    scaled = PooledFeatures(bb, max_value=255.0, resize_to=(64, 64)).eval()
    native = PooledFeatures(bb, max_value=255.0).eval()
    big = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0)) * 255.0
    small = torch.nn.functional.interpolate(big, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        # normalisation is per-pixel affine, so scaling before or after it is the same arithmetic
        assert torch.allclose(scaled(big), native(small), atol=1e-4)
        assert not torch.allclose(scaled(big), native(big), atol=1e-2)


def test_extractor_scales_fine_tuned_or_not() -> None:
    from lineguard_models.classifier import FinetuneConfig

    spec = _spec(288, 288)
    assert FeatureExtractor.from_config(spec, ClassifierConfig()).features.resize_to == (224, 224)
    assert FeatureExtractor.from_config(spec, ClassifierConfig(input_px=None)).features.resize_to is None
    tuned = ClassifierConfig(finetune=FinetuneConfig(), average_views=True)
    assert FeatureExtractor.from_config(spec, tuned).features.resize_to == (224, 224)


def _blobs(n: int, seed: int, bright: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = rng.integers(60, 90, (96, 96)).astype(np.uint8)
        y, x = rng.integers(10, 60, 2)
        im[y : y + 24, x : x + 24] = 230 if bright else 5
        out.append(im)
    return out


def test_scaled_classifier_exports_with_the_same_probabilities(tmp_path) -> None:  # type: ignore[no-untyped-def]
    images = {"bright": _blobs(12, 1, True), "dark": _blobs(12, 2, False)}
    cfg = ClassifierConfig(input_px=64, l2_grid=(3e-3,), cv_folds=2, max_iter=60, select=False)
    clf = train_classifier(images, spec=SPEC, seed=0, config=cfg)
    assert clf.graph.features.resize_to == (64, 64)
    clf.export_onnx(tmp_path / "clf.onnx")
    sess = cpu_session(tmp_path / "clf.onnx")
    assert sess.get_inputs()[0].shape[2:] == [96, 96]  # the edge still feeds the frame at the input spec
    probe = _blobs(3, 9, True) + _blobs(3, 10, False)
    batch = np.stack([im[None].astype(np.float32) for im in probe])
    onnx_probs = sess.run(None, {sess.get_inputs()[0].name: batch})[0]
    np.testing.assert_allclose(onnx_probs, clf.predict_proba(probe), atol=1e-4)
    assert (onnx_probs.argmax(1) == [0, 0, 0, 1, 1, 1]).all()


def test_sharing_keeps_the_anomaly_input_size() -> None:
    def scorer(variant: str) -> AnomalyScorer:
        bb = EfficientNetLite0.from_state_dict_file(out_stages=("stage3", "stage4"), variant=variant)  # type: ignore[arg-type]
        spec = ScorerSpec(input_height_px=96, input_width_px=96, channels=1, max_value=255.0,
                          stages=("stage3", "stage4"), neighbourhood_cells=3, projection_dim=None,
                          projection_seed=0, blur_sigma_px=1.0, image_score="map_max")
        rows = sum(bb.stage_channels[s] for s in spec.stages)
        return AnomalyScorer(bb, torch.zeros(4, rows), spec).eval()

    lite0, lite2 = scorer("efficientnet_lite0"), scorer("efficientnet_lite2")
    assert may_share(lite0, ClassifierConfig())
    assert not may_share(lite0, ClassifierConfig(share_backbone=False))
    assert not may_share(lite2, ClassifierConfig())  # different weights: the classifier scales its own frame
    images = {"bright": _blobs(6, 3, True), "dark": _blobs(6, 4, False)}
    scaled = train_classifier(images, spec=SPEC, seed=0,
                              config=ClassifierConfig(input_px=64, l2_grid=(3e-3,), cv_folds=2, max_iter=40,
                                                      select=False, stages=("stage5", "stage6")))
    shared, why = shared_stage_for(lite0, scaled, ClassifierConfig(input_px=64), SPEC)
    assert shared is None and "input_px" in why
