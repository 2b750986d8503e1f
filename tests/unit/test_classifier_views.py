"""Orientation views of the classifier: allowed by the camera profile, averaged inside the ONNX graph."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lineguard.preprocess import InputSpec
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, TrainedClassifier, train_classifier
from lineguard_models.classifier_graph import PROBS_OUTPUT, export_classifier_onnx
from lineguard_models.synth import SynthConfig, render_pixels
from lineguard_models.views import VIEW_OPS, ViewAveraged, Views

CLASSES = ("scratch", "pit", "stain")
FAST = ClassifierConfig(l2_grid=(3e-3,), cv_folds=3, max_iter=60)
SQUARE = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
FREE = CameraProfile(sensor="mono", bit_depth=8, orientation_specific=False, flips=("horizontal",),
                     rotate_90=True, copies_per_image=0)


def _images(label: str, n: int, start: int = 0) -> list[Any]:
    cfg = SynthConfig(width_px=64, height_px=64, channels=1, bit_depth=8, defect_strength=2.0)
    return [render_pixels(cfg, label, start + i) for i in range(n)]


def test_views_follow_the_camera_profile() -> None:
    wide = SQUARE.model_copy(update={"input_width": 96})
    fixed = CameraProfile(sensor="mono", bit_depth=8)  # orientation_specific by default
    assert Views.for_camera(fixed, SQUARE).names == ("identity",)
    assert len(Views.for_camera(FREE, SQUARE)) == 8
    # a non-square input keeps its size: flips and the half turn only
    assert set(Views.for_camera(FREE, wide).names) == {"identity", "hflip", "vflip", "rot180"}
    flips = CameraProfile(sensor="mono", bit_depth=8, orientation_specific=False, flips=("vertical",))
    assert Views.for_camera(flips, SQUARE).names == ("identity", "vflip")
    with pytest.raises(ValueError, match="identity"):
        Views(names=("hflip",))


def test_the_eight_views_are_the_dihedral_group() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    seen = {tuple(Views.apply(v, x).flatten().tolist()) for v in VIEW_OPS}
    assert len(seen) == 8  # all distinct
    assert torch.equal(Views.apply("rot90", x), torch.rot90(x, 1, (2, 3)))
    assert torch.equal(Views.apply("rot270", x), torch.rot90(x, 3, (2, 3)))
    for a, b in itertools.product(VIEW_OPS, repeat=2):  # closed under composition
        assert tuple(Views.apply(a, Views.apply(b, x)).flatten().tolist()) in seen


class _Tiny(torch.nn.Module):
    """A position-sensitive toy classifier: a view changes its output, so averaging is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x.flatten(1) / 16.0), dim=1)


def test_view_average_is_the_mean_of_per_view_probabilities_in_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    views = Views.for_profile(flips=("horizontal",), rotate_90=True, square=True)
    spec = SQUARE.model_copy(update={"input_width": 4, "input_height": 4})
    path = export_classifier_onnx(ViewAveraged(model, views), tmp_path / "tta.onnx", spec=spec)
    x = torch.rand(3, 1, 4, 4) * 255
    with torch.no_grad():
        per_view = torch.stack([model(Views.apply(v, x)) for v in views.names]).mean(0).numpy()
        assert not np.allclose(per_view, model(x).numpy(), atol=1e-3)  # the toy does see orientation
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([PROBS_OUTPUT], {"image": x.numpy()})[0]
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, per_view, atol=1e-6)


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=FAST.stages)


@pytest.fixture(scope="module")
def with_views(backbone: EfficientNetLite0) -> TrainedClassifier:
    data = {c: _images(c, 5) for c in CLASSES}
    config = FAST.model_copy(update={"average_views": True})  # the option; off by default
    return train_classifier(data, spec=SQUARE, profile=FREE, seed=0, config=config, backbone=backbone)


def test_training_uses_every_allowed_view(with_views: TrainedClassifier) -> None:
    report = with_views.cv_report
    assert report["augmentation"]["views"] == list(with_views.views.names) and len(with_views.views) == 8
    assert report["view_rows"] == 15 * 7 and report["views_averaged"] is True
    assert report["balanced_accuracy"] >= 0.7, report


def test_exported_graph_averages_rotated_images(with_views: TrainedClassifier, tmp_path: Path) -> None:
    """ONNX output == torch output == mean of the single-view graph over the rotated raw images."""
    with_views.export_onnx(tmp_path / "classifier.onnx")
    session = ort.InferenceSession(str(tmp_path / "classifier.onnx"), providers=["CPUExecutionProvider"])
    images = _images("pit", 1, start=70) + _images("stain", 1, start=71)
    batch = np.stack([im[None].astype(np.float32) for im in images])
    onnx_probs = session.run([PROBS_OUTPUT], {"image": batch})[0]
    np.testing.assert_allclose(onnx_probs, with_views.predict_proba(images), atol=1e-4)
    single = with_views.graph.eval()
    turned = [np.rot90(images[0], k) for k in range(4)] + [np.rot90(images[0].T, k) for k in range(4)]
    with torch.no_grad():
        manual = np.mean([single(torch.from_numpy(np.ascontiguousarray(t)[None, None].astype(np.float32))).numpy()
                          for t in turned], axis=0)
    np.testing.assert_allclose(onnx_probs[0], manual[0], atol=1e-4)


def test_orientation_specific_profile_exports_the_plain_graph(backbone: EfficientNetLite0) -> None:
    data = {c: _images(c, 5) for c in CLASSES[:2]}
    fixed = CameraProfile(sensor="mono", bit_depth=8, copies_per_image=0)
    clf = train_classifier(data, spec=SQUARE, profile=fixed, config=FAST, backbone=backbone)
    assert clf.views.names == ("identity",) and clf.cv_report["view_rows"] == 0
    images = _images("pit", 2, start=90)
    batch = torch.from_numpy(np.stack([im[None].astype(np.float32) for im in images]))
    with torch.no_grad():
        np.testing.assert_allclose(clf.predict_proba(images), clf.graph(batch).numpy(), atol=1e-6)


def test_by_default_views_train_but_are_not_averaged(backbone: EfficientNetLite0) -> None:
    data = {c: _images(c, 5) for c in CLASSES[:2]}
    mirror = CameraProfile(sensor="mono", bit_depth=8, orientation_specific=False, flips=("horizontal",),
                           copies_per_image=0)
    assert FAST.orientation_views and not FAST.average_views  # the shipped defaults
    clf = train_classifier(data, spec=SQUARE, profile=mirror, config=FAST, backbone=backbone)
    assert clf.views.names == ("identity",)  # one backbone pass per part on the edge
    assert clf.cv_report["view_rows"] == 10 and clf.cv_report["views_averaged"] is False
    assert clf.cv_report["augmentation"]["views"] == ["identity", "hflip"]
