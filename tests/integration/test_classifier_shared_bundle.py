"""Shared backbone pass end to end: ``lineguard train`` -> bundle -> edge runner on ONNX Runtime.

A bundle trained on generated data (untiled spec) has a classifier fed by the anomaly engine's
``shared_features`` map. The edge runner must hand exactly the top tile's map to the classifier
engine, its class_probs must equal the image path (the same classifier exported from the image,
trained again with the same seed), and a bundle whose anomaly graph lacks the map or whose shapes
disagree is refused when the engines load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from lineguard.bundle import MANIFEST, Bundle, EngineSpec, load_bundle, staging_dir, write_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig, run_golden
from lineguard.engines.base import Engine, build_engine
from lineguard.errors import BundleError
from lineguard.imageio import read_image
from lineguard.preprocess import prepare
from lineguard_models.classifier_bundle import classifier_for_bundle
from lineguard_models.data import scan_dataset
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.synth import SynthConfig, render_pixels, write_dataset

CPU = OrtEngineConfig(intra_op_threads=1)
SYNTH = SynthConfig(width_px=64, height_px=48, n_good=10, n_defect_per_class=5, defect_classes=("scratch", "pit"),
                    defect_strength=2.5, seed=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    root = tmp_path_factory.mktemp("shared")
    write_dataset(root / "data", SYNTH)
    # the anomaly engine on the classifier's backbone (Lite0): only then can the classifier continue its pass
    cfg = TrainConfig(input_size_px=64, bank_size=32, min_holdout=5, seed=1, backbone="efficientnet_lite0")
    return train(root / "data", root / "bundle", cfg, progress=lambda _m: None), root / "data"


class RecordingEngine:
    """A real engine that keeps a copy of every batch it is given (to prove what feeds it)."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.role, self.batches = inner, inner.role, []  # type: list[npt.NDArray[np.float32]]

    @property
    def provider(self) -> str:
        return self.inner.provider

    def run(self, batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
        self.batches.append(batch.copy())
        return self.inner.run(batch)

    def close(self) -> None:
        self.inner.close()


def _suspects(bundle: Bundle) -> list[npt.NDArray[Any]]:
    """Defect images of both classes (not seen in training), plus the golden rejects."""
    rendered = [render_pixels(SYNTH, c, i) for c in SYNTH.defect_classes for i in range(50, 54)]
    golden = [read_image(bundle.path(g.file)) for g in bundle.manifest.golden if g.expected_verdict != "accept"]
    return rendered + golden


def test_manifest_and_golden_self_test_of_a_shared_bundle(trained: tuple[Bundle, Path]) -> None:
    bundle, _ = trained
    m = bundle.manifest
    clf = m.engines["classifier"]
    assert clf.input_source == "anomaly:shared_features" and clf.input_name == "shared_features"
    assert clf.input_chw == (80, 4, 6)  # stage4 (stride 16), the anomaly's deepest stage, of the 96x64 input
    assert m.engines["anomaly"].outputs["features"] == "shared_features"
    report = m.calibration["classifier"]["shared_backbone"]
    assert report["shared"] and report["stage"] == "stage4" and report["max_probs_abs_diff"] < 1e-4
    # no camera profile declared: the per-line choice may take a views twin; its one view still continues the
    # anomaly pass, and its views engine reads the image (the parts one view is unsure of)
    chosen = m.calibration["classifier"]["selection"]["chosen"]
    assert ("classifier_views" in m.engines) == chosen.endswith("_tta") == (m.classifier.views_below is not None)
    if "classifier_views" in m.engines:
        assert m.engines["classifier_views"].input_source == "image"
    with BundleRunner.from_bundle(bundle, CPU) as runner:
        runner.warmup()
        assert run_golden(runner, bundle) == []


def test_runner_feeds_the_top_tiles_anomaly_map_to_the_classifier(trained: tuple[Bundle, Path]) -> None:
    bundle, _ = trained
    anomaly = build_engine(bundle, "anomaly", CPU, batch=1)
    recorder = RecordingEngine(build_engine(bundle, "classifier", CPU, batch=1))
    probed = 0
    with BundleRunner(bundle=bundle, anomaly=anomaly, classifier=recorder, with_map=False) as runner:
        for image in _suspects(bundle):
            out = runner.infer(image)
            if out.class_probs is None:
                continue  # accepted: the classifier did not run
            batch, _ = prepare(image, bundle.manifest.input)
            expected = anomaly.run(batch)["features"]
            np.testing.assert_array_equal(recorder.batches[-1], expected)
            assert recorder.batches[-1].shape == (1, 80, 4, 6)
            probed += 1
    assert probed == len(recorder.batches) >= 4


def test_shared_class_probs_equal_the_image_path(trained: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, data = trained
    # the same classifier (same data, seed and profile as `train` used) exported from the image
    image_path = classifier_for_bundle(scan_dataset(data), bundle.manifest.input, tmp_path, seed=1,
                                       progress=lambda _m: None)
    assert image_path is not None and EngineSpec.model_validate(image_path["engine"]).input_source == "image"
    assert "input_source" not in image_path["engine"]  # an image-mode entry is written as before
    assert image_path["classifier"]["classes"] == bundle.manifest.classifier.classes  # type: ignore[union-attr]
    sess = ort.InferenceSession(str(tmp_path / image_path["engine"]["file"]), providers=["CPUExecutionProvider"])
    # where the per-line choice took a views twin, parts its one view is unsure of are read by the views engine,
    # which reads the image in both bundles
    below = image_path["classifier"]["views_below"]
    assert (below is not None) == (image_path["views_engine"] is not None)
    assert (below is not None) == ("classifier_views" in bundle.manifest.engines)
    views = None if below is None else ort.InferenceSession(str(tmp_path / image_path["views_engine"]["file"]),
                                                            providers=["CPUExecutionProvider"])
    compared = 0
    with BundleRunner.from_bundle(bundle, CPU) as runner:
        for image in _suspects(bundle):
            out = runner.infer(image)
            if out.class_probs is None:
                continue
            batch, _ = prepare(image, bundle.manifest.input)
            (expected,) = sess.run(["class_probs"], {"image": batch})
            if views is not None and expected[0].max() < below:
                (expected,) = views.run(["class_probs"], {"image": batch})
            np.testing.assert_allclose(out.class_probs, expected[0], atol=1e-5)
            compared += 1
    assert compared >= 4


def _rewrite(bundle: Bundle, out: Path, edit_manifest: Any = None, edit_anomaly: Any = None) -> Path:
    """A copy of ``bundle`` re-hashed after editing its manifest and/or its anomaly graph."""
    staging = staging_dir(out)
    shutil.rmtree(staging)
    shutil.copytree(bundle.root, staging)
    doc = json.loads((staging / MANIFEST).read_text())
    (staging / MANIFEST).unlink()
    for key in ("files", "schema_version"):
        doc.pop(key)
    if edit_manifest is not None:
        edit_manifest(doc)
    if edit_anomaly is not None:
        path = staging / doc["engines"]["anomaly"]["file"]
        model = onnx.load(str(path))
        edit_anomaly(model)
        onnx.save(model, str(path))
    return write_bundle(staging, doc, out).root


def test_anomaly_graph_without_the_shared_output_is_refused(trained: tuple[Bundle, Path], tmp_path: Path) -> None:
    def drop_output(model: onnx.ModelProto) -> None:
        keep = [o for o in model.graph.output if o.name != "shared_features"]
        del model.graph.output[:]
        model.graph.output.extend(keep)

    root = _rewrite(trained[0], tmp_path / "b", edit_anomaly=drop_output)
    with pytest.raises(BundleError, match="shared_features"):
        BundleRunner.from_bundle(load_bundle(root), CPU)


def test_shape_mismatch_between_map_and_classifier_is_refused(trained: tuple[Bundle, Path], tmp_path: Path) -> None:
    def wrong_chw(doc: dict[str, Any]) -> None:
        doc["engines"]["classifier"]["input_chw"] = [80, 6, 8]  # a stage3-sized map: another training's

    root = _rewrite(trained[0], tmp_path / "b", edit_manifest=wrong_chw)
    with pytest.raises(BundleError, match="input_chw"):
        BundleRunner.from_bundle(load_bundle(root), CPU)


def test_int8_calibration_data_of_a_shared_classifier_are_the_anomaly_maps(trained: tuple[Bundle, Path]) -> None:
    """TensorRT cannot run here; its INT8 calibration data for the shared classifier is plain ORT code."""
    from lineguard.engines.tensorrt import calibration_batches

    bundle = trained[0]
    batches = calibration_batches(bundle, 1, 1, bundle.manifest.engines["classifier"])
    assert len(batches) == len(bundle.manifest.golden) and batches[0].shape == (1, 80, 4, 6)
    anomaly = build_engine(bundle, "anomaly", CPU, batch=1)
    tile, _ = prepare(read_image(bundle.path(bundle.manifest.golden[0].file)), bundle.manifest.input)
    np.testing.assert_allclose(batches[0], anomaly.run(tile)["features"], rtol=1e-5, atol=1e-6)
    assert calibration_batches(bundle, 1, 1, bundle.manifest.engines["anomaly"])[0].shape == tile.shape
