"""Few-shot classifier on generated defects: training, thresholds, export parity, bad inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lineguard.errors import ConfigError, DatasetError
from lineguard.preprocess import InputSpec, TileSpec
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import (
    PROBS_OUTPUT,
    ClassifierConfig,
    TrainedClassifier,
    check_class_sizes,
    train_classifier,
)
from lineguard_models.synth import SynthConfig, render_pixels

CLASSES = ("scratch", "pit", "stain")
FAST = ClassifierConfig(l2_grid=(3e-3,), cv_folds=3, max_iter=60)


def _images(label: str, n: int, *, channels: int = 1, bits: int = 8, start: int = 0) -> list[Any]:
    cfg = SynthConfig(width_px=64, height_px=64, channels=channels, bit_depth=bits,  # type: ignore[arg-type]
                      defect_strength=2.0)
    return [render_pixels(cfg, label, start + i) for i in range(n)]


def _spec(channels: int = 1, dtype: str = "uint8", max_value: int = 255) -> InputSpec:
    return InputSpec(channels=channels, dtype=dtype, max_value=max_value,  # type: ignore[arg-type]
                     input_width=64, input_height=64)


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=FAST.stages)


@pytest.fixture(scope="module")
def trained(backbone: EfficientNetLite0) -> TrainedClassifier:
    data = {c: _images(c, 8) for c in CLASSES}
    profile = CameraProfile(sensor="mono", bit_depth=8, gain_range=(0.9, 1.1), noise_std_max_frac=0.01,
                            copies_per_image=1)
    return train_classifier(data, spec=_spec(), profile=profile, seed=0, config=FAST, backbone=backbone)


def test_learns_generated_defect_types(trained: TrainedClassifier) -> None:
    assert trained.classes == tuple(sorted(CLASSES))
    report = trained.cv_report
    assert report["folds"] == 3 and report["augmented_rows"] == 24
    assert report["balanced_accuracy"] >= 0.7, report  # chance is 0.33
    # unseen images of each class (other render indices) are named correctly
    fresh = {c: _images(c, 4, start=100) for c in CLASSES}
    images = [im for c in CLASSES for im in fresh[c]]
    truth = np.array([trained.classes.index(c) for c in CLASSES for _ in range(4)])
    assert np.mean(trained.predict_proba(images).argmax(1) == truth) >= 0.75


def test_thresholds_lie_between_chance_and_cap(trained: TrainedClassifier) -> None:
    k = len(trained.classes)
    for name in trained.classes:
        assert 1.0 / k - 1e-6 <= trained.min_confidence[name] <= FAST.max_min_confidence
    spec = trained.classifier_spec()  # validated by the bundle schema
    assert spec.classes == list(trained.classes) and spec.camera_profile["sensor"] == "mono"


def test_onnx_export_matches_torch(trained: TrainedClassifier, tmp_path: Path) -> None:
    engine = trained.export_onnx(tmp_path / "classifier.onnx")
    assert engine.outputs == {"probs": PROBS_OUTPUT} and engine.input_name == "image"
    session = ort.InferenceSession(str(tmp_path / "classifier.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [PROBS_OUTPUT]
    images = _images("crack", 2) + _images("pit", 1, start=50)  # crack: a class it never saw
    batch = np.stack([im[None].astype(np.float32) for im in images])
    probs = session.run([PROBS_OUTPUT], {"image": batch})[0]
    assert probs.shape == (3, len(trained.classes))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, trained.predict_proba(images), atol=1e-4)


def test_one_image_class_is_refused_with_a_clear_error() -> None:
    data = {"scratch": _images("scratch", 6), "pit": _images("pit", 1)}
    with pytest.raises(DatasetError, match=r"'pit' has 1 image;.*at least 5 images"):
        check_class_sizes(data)
    with pytest.raises(DatasetError, match="at least 2 defect classes"):
        check_class_sizes({"scratch": _images("scratch", 6)})


def test_small_classes_warn(caplog: pytest.LogCaptureFixture, backbone: EfficientNetLite0) -> None:
    data = {"scratch": _images("scratch", 5), "stain": _images("stain", 5)}
    profile = CameraProfile(sensor="mono", bit_depth=8, copies_per_image=0)
    with caplog.at_level(logging.WARNING):
        clf = train_classifier(data, spec=_spec(), profile=profile, config=FAST, backbone=backbone)
    assert any("only 5 images" in r.message for r in caplog.records)
    assert len(clf.warnings) == 2 and clf.cv_report["augmented_rows"] == 0


def test_sixteen_bit_colour_images(backbone: EfficientNetLite0) -> None:
    data = {c: _images(c, 5, channels=3, bits=16) for c in ("scratch", "stain")}
    spec = _spec(channels=3, dtype="uint16", max_value=65535)
    profile = CameraProfile(sensor="colour", bit_depth=16, white_balance_max_frac=0.05, copies_per_image=1)
    clf = train_classifier(data, spec=spec, profile=profile, config=FAST, backbone=backbone)
    probs = clf.predict_proba(_images("stain", 2, channels=3, bits=16, start=40))
    assert probs.shape == (2, 2) and clf.classes[int(probs[0].argmax())] == "stain"


def test_profile_of_another_camera_and_tiled_specs_are_refused(backbone: EfficientNetLite0) -> None:
    data = {c: _images(c, 5) for c in ("scratch", "stain")}
    colour = CameraProfile(sensor="colour", bit_depth=8)
    with pytest.raises(ConfigError, match="says colour"):
        train_classifier(data, spec=_spec(), profile=colour, config=FAST, backbone=backbone)
    tiled = _spec().model_copy(update={"tiles": TileSpec(rows=2, cols=2)})
    with pytest.raises(ConfigError, match="tiles"):
        train_classifier(data, spec=tiled, config=FAST, backbone=backbone)
