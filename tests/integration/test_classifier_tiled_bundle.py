"""A tiled line gets a defect classifier, trained on the tile the edge will feed it.

``lineguard train`` on generated data with 1x2 tiles and two defect classes -> bundle -> the edge's
``BundleRunner`` on ONNX Runtime. The edge classifies the tile with the highest anomaly score, so the
classifier is trained on that tile of every labelled image (``classifier_bundle.top_tiles``, chosen by
the exported anomaly engine). Checked: the tile choice follows a planted defect; the manifest records
the tiling, why the backbone pass is not shared, and the classifier graphs' prices measured on this
CPU; the runner's class probabilities equal the classifier graph run on the top tile cut from the
frame and prepared with the tile's spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from lineguard.bundle import Bundle, load_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.preprocess import InputSpec, TileSpec, prepare, tile_regions
from lineguard_models.classifier_bundle import top_tiles
from lineguard_models.ortscore import OrtScorer
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.synth import SynthConfig, render_pixels, write_dataset

CPU = OrtEngineConfig(intra_op_threads=1)
SYNTH = SynthConfig(n_good=12, n_defect_per_class=6, defect_classes=("scratch", "pit"), defect_strength=2.5, seed=5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("tiled")
    write_dataset(root / "data", SYNTH)
    cfg = TrainConfig(input_size_px=64, tile_rows=1, tile_cols=2, bank_size=32, min_holdout=5, seed=1)
    train(root / "data", root / "bundle", cfg, progress=lambda _m: None)
    return load_bundle(root / "bundle")  # verified as the edge loads it


def _tile_spec(spec: InputSpec, width: int, height: int) -> InputSpec:
    return InputSpec.model_validate({**spec.model_dump(), "tiles": TileSpec().model_dump(),
                                     "image_width": width, "image_height": height})


def test_the_manifest_of_a_tiled_line_carries_a_classifier_fed_by_the_image(bundle: Bundle) -> None:
    m = bundle.manifest
    assert m.input.tiles.count == 2 and m.classifier is not None
    assert list(m.classifier.classes) == ["pit", "scratch"]
    clf = m.engines["classifier"]
    assert clf.input_source == "image" and clf.input_chw is None
    report = m.calibration["classifier"]
    assert report["shared_backbone"] == {"shared": False,
                                         "reason": "the input spec is tiled: the classifier reads the top-scoring tile"}
    tiles = report["tiles"]
    assert (tiles["rows"], tiles["cols"]) == (1, 2)
    assert sum(tiles["chosen_per_tile"]) == 2 * SYNTH.n_defect_per_class  # every labelled image, one tile each
    # the per-line choice priced its candidates' graphs on this CPU, on a tile (classifier_bundle.classifier_prices)
    sel = report["selection"]
    assert sel["classifier_p50_source"].startswith("measured on this CPU")
    assert set(sel["classifier_p50_ms"]) == {"stage5+stage6", "stage5+stage6+stage7", "stage4+stage5+stage6+stage7"}
    assert all(v > 0 for v in sel["classifier_p50_ms"].values())


def test_the_tile_chosen_for_training_is_the_one_holding_the_defect(bundle: Bundle) -> None:
    m = bundle.manifest
    onnx = bundle.path(m.engines["anomaly"].file)
    frame = render_pixels(SYNTH, "good", 70)
    regions = tile_regions(frame.shape[1], frame.shape[0], m.input.tiles)
    for side in (0, 1):  # a bright flaw in the middle of one tile, then of the other
        img = frame.copy()
        x0, y0, tw, th = regions[side]
        img[y0 + th // 2 - 4 : y0 + th // 2 + 4, x0 + tw // 2 - 4 : x0 + tw // 2 + 4] = 255
        tiles, spec, report = top_tiles({"flaw": [img]}, m.input, onnx)
        assert report["chosen_per_tile"] == [1 - side, side]
        np.testing.assert_array_equal(tiles["flaw"][0], img[y0 : y0 + th, x0 : x0 + tw])
        assert spec.tiles.count == 1 and (spec.image_width, spec.image_height) == (tw, th)
        assert (spec.input_width, spec.input_height) == (m.input.input_width, m.input.input_height)


def test_the_edge_classifies_the_top_tile_as_the_classifier_was_trained(bundle: Bundle) -> None:
    m = bundle.manifest
    runner = BundleRunner.from_bundle(bundle, CPU)
    scorer = OrtScorer(bundle.path(m.engines["anomaly"].file), m.input)
    session = ort.InferenceSession(str(bundle.path(m.engines["classifier"].file)), providers=["CPUExecutionProvider"])
    checked = 0
    for cls in SYNTH.defect_classes:
        for i in range(50, 54):  # not among the training images
            img: npt.NDArray[Any] = render_pixels(SYNTH, cls, i)
            out = runner.infer(img)
            if out.class_probs is None:  # accepted: the classifier does not run
                continue
            top = int(np.argmax(scorer.tile_scores(img)))
            x0, y0, tw, th = tile_regions(img.shape[1], img.shape[0], m.input.tiles)[top]
            tile = np.ascontiguousarray(img[y0 : y0 + th, x0 : x0 + tw])
            (want,) = session.run(["class_probs"], {"image": prepare(tile, _tile_spec(m.input, tw, th))[0]})
            np.testing.assert_allclose(out.class_probs, want[0], atol=1e-5)
            checked += 1
    assert checked >= 4  # most of the planted defects are flagged, so the comparison really ran


def test_the_training_report_shows_the_classifier(bundle: Bundle) -> None:
    """report.md, report.html and report.json carry the classifier's figures and the per-line choice."""
    clf = bundle.manifest.calibration["classifier"]
    md = bundle.path("report/report.md").read_text(encoding="utf-8")
    section = md.split("## Defect classifier", 1)[1].split("\n## ", 1)[0]
    assert f"cross-validated accuracy {clf['accuracy']:.3f}" in section
    assert "tiled line (1x2): trained on each image's tile with the highest anomaly score" in section
    assert f"recipe chosen for this line: {clf['selection']['chosen']}" in section
    for name, v in clf["per_class"].items():  # one row per class with its recall and min_confidence
        assert f"| {name} | {v['n_images']} | {v['recall']:.3f} | {v['min_confidence']:.3f} |" in section
    assert all(f"| {c['name']} |" in section for c in clf["selection"]["candidates"])
    html = bundle.path("report/report.html").read_text(encoding="utf-8")
    assert '<section id="classifier"><h2>Defect classifier</h2>' in html and "tiled line (1x2)" in html
    assert json.loads(bundle.path("report/report.json").read_text())["classifier"]["accuracy"] == clf["accuracy"]



def test_a_recalibrated_bundle_keeps_the_classifier_report_and_its_section(bundle: Bundle, tmp_path: Path) -> None:
    """``lineguard calibrate`` changes thresholds only: the classifier and its CV report carry over, and the new
    report page repeats the classifier's section (before stop 16 both were dropped from the new bundle)."""
    from lineguard_models.pipeline import recalibrate

    new = tmp_path / "new"  # a different seed renders different parts: new images to score
    write_dataset(new, SynthConfig(n_good=4, n_defect_per_class=3, defect_classes=("scratch", "pit"), seed=77))
    after = recalibrate(bundle.root, new, tmp_path / "b2", progress=lambda _m: None)
    m, before = after.manifest, bundle.manifest
    assert m.provenance["recalibrated_from"] == before.bundle_id and m.bundle_id != before.bundle_id
    assert m.calibration["classifier"] == before.calibration["classifier"]
    assert m.classifier == before.classifier and m.files["classifier.onnx"] == before.files["classifier.onnx"]
    md = after.path("report/report.md").read_text(encoding="utf-8")
    assert f"cross-validated accuracy {before.calibration['classifier']['accuracy']:.3f}" in md
    assert '<section id="classifier">' in after.path("report/report.html").read_text(encoding="utf-8")
