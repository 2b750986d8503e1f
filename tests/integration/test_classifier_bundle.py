"""`lineguard train` with defect folders -> bundle with a classifier engine, run in ONNX Runtime.

Also the bad inputs at folder level: a class folder with one image (the classifier is skipped with
the reason, the anomaly bundle is still written) and unreadable files (refused unless skipped).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lineguard.bundle import load_bundle
from lineguard.cli import main
from lineguard.engines.config import OrtEngineConfig
from lineguard.engines.runner import BundleRunner
from lineguard.errors import DatasetError
from lineguard.preprocess import prepare
from lineguard_models.classifier import defect_images, train_classifier
from lineguard_models.classifier_curve import SHARES
from lineguard_models.data import scan_dataset
from lineguard_models.synth import SynthConfig, render_pixels, write_dataset

CLASSES = ("scratch", "pit", "stain")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("clf")
    write_dataset(base / "data", SynthConfig(width_px=64, height_px=64, n_good=12, n_defect_per_class=6,
                                             defect_classes=CLASSES, defect_strength=2.0, seed=5))
    out = base / "bundle"
    profile = base / "camera.yaml"  # this line's defects have no orientation: flips are physical
    profile.write_text("sensor: mono\nbit_depth: 8\norientation_specific: false\nflips: [horizontal, vertical]\n")
    rc = main(["train", "--data", str(base / "data"), "--out", str(out), "--input-size", "64",
               "--bank-size", "32", "--seed", "2", "--camera-profile", str(profile),
               "--backbone", "efficientnet_lite0"])  # the classifier's backbone: its pass can be shared
    assert rc == 0
    return out


def test_bundle_carries_a_working_classifier(bundle: Path) -> None:
    m = load_bundle(bundle).manifest  # hashes verified, classifier section validated
    assert m.classifier is not None and m.classifier.classes == sorted(CLASSES)
    engine = m.engines["classifier"]
    # untiled spec, stage5-7 after the anomaly's stage4: the classifier shares the backbone pass
    assert engine.outputs == {"probs": "class_probs"} and engine.input_source == "anomaly:shared_features"
    assert m.classifier.camera_profile["sensor"] == "mono"
    assert sorted(m.classifier.camera_profile["flips"]) == ["horizontal", "vertical"]  # --camera-profile used
    assert m.calibration["classifier"]["folds"] == 5
    tuned = [c for c in m.calibration["classifier"]["selection"]["candidates"] if c["name"] == "finetune"]
    assert tuned and tuned[0]["skipped"].startswith("6 images in the smallest class")  # recorded, not tried
    # what labelling more would buy: out-of-fold points on thinned folds, and the report says it
    curve = m.calibration["classifier"]["learning_curve"]
    assert len(curve["points"]) == len(SHARES) + 1 and curve["images_per_class"] == 6
    assert [p[0] for p in curve["points"]] == sorted(p[0] for p in curve["points"])
    assert curve["points"][-1][1] == m.calibration["classifier"]["accuracy"]
    assert "Learning curve" in (bundle / "report" / "report.md").read_text()
    anomaly = ort.InferenceSession(str(bundle / m.engines["anomaly"].file), providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(str(bundle / engine.file), providers=["CPUExecutionProvider"])
    cfg = SynthConfig(width_px=64, height_px=64, defect_strength=2.0, seed=5)
    hits = 0
    for label in CLASSES:
        for i in range(100, 103):  # render indices the training never saw
            batch, _ = prepare(render_pixels(cfg, label, i), m.input)
            (stage_map,) = anomaly.run(["shared_features"], {"image": batch})
            probs = sess.run(["class_probs"], {"shared_features": stage_map})[0]
            assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1.0) < 1e-5
            hits += m.classifier.classes[int(probs.argmax())] == label
    assert hits >= 6  # of 9; chance is 3


def test_one_image_class_skips_the_classifier_not_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dataset(tmp_path / "data", SynthConfig(width_px=48, height_px=48, n_good=10, n_defect_per_class=5,
                                                 defect_classes=("scratch", "pit"), seed=1))
    for extra in sorted((tmp_path / "data" / "pit").iterdir())[1:]:
        extra.unlink()  # 'pit' keeps one image
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b"), "--input-size", "64",
               "--bank-size", "16"])
    assert rc == 0
    assert "defect classifier skipped" in capsys.readouterr().out
    assert load_bundle(tmp_path / "b").manifest.classifier is None
    with pytest.raises(DatasetError, match="'pit' has 1 image"):
        spec = load_bundle(tmp_path / "b").manifest.input
        train_classifier(defect_images(scan_dataset(tmp_path / "data")), spec=spec)


def test_unreadable_image_is_refused_unless_skipped(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", SynthConfig(width_px=48, height_px=48, n_good=2, n_defect_per_class=5,
                                                 defect_classes=("scratch", "stain"), seed=2))
    (tmp_path / "data" / "stain" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        scan_dataset(tmp_path / "data")
    ds = scan_dataset(tmp_path / "data", allow_unreadable=True)
    images = defect_images(ds)
    assert {c: len(v) for c, v in images.items()} == {"scratch": 5, "stain": 5}
    assert all(im.ndim == 2 and im.dtype == np.uint8 for v in images.values() for im in v)


@pytest.mark.parametrize(("profile", "message"), [
    ("sensor: colour\nbit_depth: 8\n", "camera profile says colour"),
    ("sensor: mono\nbit_depth: 8\nperspective: 0.1\n", "perspective"),
])
def test_impossible_camera_profile_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, message: str
) -> None:
    write_dataset(tmp_path / "data", SynthConfig(width_px=48, height_px=48, n_good=8, n_defect_per_class=5,
                                                 defect_classes=("scratch", "pit"), seed=1))
    (tmp_path / "camera.yaml").write_text(profile)
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b"), "--input-size", "64",
               "--camera-profile", str(tmp_path / "camera.yaml")])
    assert rc == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_finetuned_classifier_bundle_takes_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path / "data", SynthConfig(width_px=64, height_px=64, n_good=10, n_defect_per_class=6,
                                                 defect_classes=CLASSES, defect_strength=2.0, seed=5))
    profile = tmp_path / "camera.yaml"
    profile.write_text("sensor: mono\nbit_depth: 8\norientation_specific: false\nflips: [horizontal]\n")
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b"), "--input-size", "64",
               "--bank-size", "32", "--seed", "2", "--camera-profile", str(profile), "--classifier-finetune"])
    assert rc == 0
    m = load_bundle(tmp_path / "b").manifest
    assert m.classifier is not None
    # the learning curve is the frozen fit's (fine-tuning starts from it), and training says it on the console
    assert m.calibration["classifier"]["learning_curve"]["points"][-1][1] == m.calibration["classifier"]["frozen"][
        "accuracy"]
    assert "classifier: Learning curve" in capsys.readouterr().out
    engine = m.engines["classifier"]
    # a fine-tuned backbone is not the anomaly engine's: the classifier runs from the image, views averaged
    assert engine.input_name == "image" and engine.input_source == "image"
    report = m.calibration["classifier"]
    assert "fine-tuned" in report["method"] and report["frozen"]["folds"] == 5
    assert m.provenance["training"]["classifier"]["finetune"]["epochs"] == 4
    assert report["augmentation"]["views"] == ["identity", "hflip"]
    # one view in 'classifier'; every view averaged in 'classifier_views', run only below views_below
    views = m.engines["classifier_views"]
    below = m.classifier.views_below
    assert views.input_source == "image" and below is not None
    assert report["views_only_when_unsure"]["views_below"] == below
    one, every = (ort.InferenceSession(str(tmp_path / "b" / e.file), providers=["CPUExecutionProvider"])
                  for e in (engine, views))
    cfg = SynthConfig(width_px=64, height_px=64, defect_strength=2.0, seed=5)
    bundle = load_bundle(tmp_path / "b")
    hits = flagged = 0
    with BundleRunner.from_bundle(bundle, OrtEngineConfig(intra_op_threads=1)) as runner:
        runner.warmup(1)
        for label in CLASSES:
            for i in range(100, 103):
                image = render_pixels(cfg, label, i)
                batch, _ = prepare(image, m.input)
                p_one, p_every = (sess.run(["class_probs"], {"image": batch})[0][0] for sess in (one, every))
                assert p_one.shape == (3,) and abs(float(p_one.sum()) - 1.0) < 1e-5
                expected = p_every if p_one.max() < below else p_one
                hits += m.classifier.classes[int(expected.argmax())] == label
                got = runner.infer(image).class_probs
                if got is not None:  # flagged by the anomaly engine: the edge combined the two engines
                    flagged += 1
                    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert hits >= 6  # of 9; chance is 3
    assert flagged >= 6, flagged
    # the same bundle told to send every flagged part through the views: the edge reports the views' answer
    copy = tmp_path / "every"
    shutil.copytree(tmp_path / "b", copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["classifier"]["views_below"] = 1.0
    (copy / "manifest.json").write_text(json.dumps(doc))
    with BundleRunner.from_bundle(load_bundle(copy), OrtEngineConfig(intra_op_threads=1)) as runner:
        for label in CLASSES:
            image = render_pixels(cfg, label, 100)
            batch, _ = prepare(image, m.input)
            got = runner.infer(image).class_probs
            if got is not None:
                np.testing.assert_allclose(got, every.run(["class_probs"], {"image": batch})[0][0], atol=1e-5)


@pytest.mark.parametrize("frozen_planted_poor", [False, True])
def test_the_per_line_choice_tries_fine_tuning_priced_on_this_cpu(tmp_path: Path, frozen_planted_poor: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the bundle glue: the candidate's graph is priced on this CPU, trained for real, and the bundle
    gets the views engine exactly when the fine-tuned classifier is the one chosen. With the frozen choice's
    re-run on the fine-tuning's folds planted at chance, the fine-tuned classifier is chosen: then the written
    engines must be the fine-tuned pair and read like it."""
    from lineguard.preprocess import InputSpec
    from lineguard_models.augment import CameraProfile
    from lineguard_models.classifier import ClassifierConfig
    from lineguard_models.classifier_bundle import classifier_for_bundle
    from lineguard_models.finetune import FinetuneConfig

    write_dataset(tmp_path / "data", SynthConfig(width_px=64, height_px=64, n_good=4, n_defect_per_class=6,
                                                 defect_classes=CLASSES, defect_strength=2.0, seed=5))
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
    profile = CameraProfile.conservative_for(spec).model_copy(update={"orientation_specific": False,
                                                                      "flips": ("horizontal",)})
    staging = tmp_path / "staging"
    staging.mkdir()
    if frozen_planted_poor:
        from lineguard_models import classifier_select

        monkeypatch.setattr(classifier_select, "out_of_fold_probs",
                            lambda fs, folds, **_: np.full((len(fs.y), len(fs.classes)), 1 / len(fs.classes)))
    config = ClassifierConfig(finetune_candidate_min_per_class=2, finetune_candidate=FinetuneConfig(epochs=1))
    out = classifier_for_bundle(scan_dataset(tmp_path / "data"), spec, staging, seed=0, progress=lambda _: None,
                                profile=profile, config=config)
    assert out is not None
    sel = out["report"]["selection"]
    (entry,) = [c for c in sel["candidates"] if c["name"] == "finetune"]
    assert not entry["skipped"] and 0.0 <= entry["cv_accuracy"] <= 1.0
    assert entry["classifier_p50_source"].startswith("measured on this CPU")
    assert entry["flagged_p50_ms"] == pytest.approx(27.0 + 1.2 + entry["classifier_p50_ms"], abs=0.06)
    chosen = sel["chosen"] == "finetune"
    assert (out["views_engine"] is not None) == chosen == (staging / "classifier_views.onnx").exists()
    assert (out["classifier"]["views_below"] is not None) == chosen
    if not frozen_planted_poor:
        return
    assert chosen and entry["beats_frozen"] and entry["frozen_cv_same_folds"] == pytest.approx(1 / 3, abs=0.1)
    assert out["engine"].get("input_name", "image") == "image" and out["report"]["shared_backbone"]["shared"] is False
    assert out["report"]["augmentation"]["views"] == ["identity", "hflip"] and "fine-tuned" in out["report"]["method"]
    one, every = (ort.InferenceSession(str(staging / f), providers=["CPUExecutionProvider"])
                  for f in ("classifier.onnx", "classifier_views.onnx"))
    image = render_pixels(SynthConfig(width_px=64, height_px=64, defect_strength=2.0, seed=5), "pit", 100)
    batch, _ = prepare(image, spec)
    p_one, p_every = (sess.run(["class_probs"], {"image": batch})[0][0] for sess in (one, every))
    flipped = one.run(["class_probs"], {"image": np.ascontiguousarray(batch[..., ::-1])})[0][0]
    np.testing.assert_allclose(p_every, (p_one + flipped) / 2, atol=1e-5)  # the views engine averages both views


def test_a_views_twin_chosen_per_line_ships_both_engines_and_the_edge_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No camera profile declared: the per-line choice tries the views candidates and their twins (read through
    every view where one view is unsure). With the pick told to take a twin whenever there is one (on 6 images a
    class the real rule rarely does), ``lineguard train`` must write the twin's head as one view in 'classifier',
    every view averaged in 'classifier_views' and its views_below, and the
    edge must combine the two engines as the twin's cross-validation did."""
    from lineguard_models import classifier_select

    real_pick = classifier_select.pick

    def twin_first(evaluated: list[classifier_select.Evaluated]) -> classifier_select.Candidate:
        twins = [e for e in evaluated if e.candidate.views_when_unsure and not e.skipped]
        return twins[0].candidate if twins else real_pick(evaluated)

    monkeypatch.setattr(classifier_select, "pick", twin_first)
    write_dataset(tmp_path / "data", SynthConfig(width_px=64, height_px=64, n_good=10, n_defect_per_class=6,
                                                 defect_classes=CLASSES, defect_strength=2.0, seed=5))
    # the default anomaly backbone (Lite2): the classifier reads the image (a twin sharing the anomaly engine's
    # pass: tests/integration/test_classifier_shared_bundle.py)
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b"), "--input-size", "64",
               "--bank-size", "32", "--seed", "2"])
    assert rc == 0
    m = load_bundle(tmp_path / "b").manifest
    assert m.classifier is not None
    sel = m.calibration["classifier"]["selection"]
    by = {c["name"]: c for c in sel["candidates"]}
    assert {"views_tta", "s4567_views_tta"} <= set(by) and sel["chosen"].endswith("_tta")
    twin, base = by[sel["chosen"]], by[sel["chosen"].removesuffix("_tta")]
    below = m.classifier.views_below
    assert below is not None and below == sel["views_below"] == twin["views_when_unsure"]["views_below"]
    assert len(sel["views"]) == 8 and sel["free_views"] == sel["views"]  # trained on every flip and turn
    assert twin["stages"] == base["stages"] and twin["views"] and base["cv_accuracy"] is not None
    md = (tmp_path / "b" / "report" / "report.md").read_text(encoding="utf-8")
    share = twin["views_when_unsure"]["through_views_oof"] * 100
    assert (f"read through one view, and through the 8 views averaged (engine classifier_views) where its top "
            f"probability is below {below:.3f}: {share:.1f} % of the images out of fold") in md
    # the views graph was priced on this CPU: one backbone pass per view on top of the single view
    cascade = twin["views_when_unsure"]
    assert cascade["views_p50_ms"] > 0 and f"the views graph {cascade['views_p50_ms']:.1f} ms p50" in md
    assert cascade["flagged_through_views_p50_ms"] > cascade["views_p50_ms"]
    # one view in 'classifier' (reading the image: the views need it), every view in 'classifier_views'
    engine, views = m.engines["classifier"], m.engines["classifier_views"]
    assert views.input_source == "image"
    assert m.calibration["classifier"]["shared_backbone"]["shared"] is False
    one, every = (ort.InferenceSession(str(tmp_path / "b" / e.file), providers=["CPUExecutionProvider"])
                  for e in (engine, views))
    cfg = SynthConfig(width_px=64, height_px=64, defect_strength=2.0, seed=5)
    flagged = 0
    with BundleRunner.from_bundle(load_bundle(tmp_path / "b"), OrtEngineConfig(intra_op_threads=1)) as runner:
        for label in CLASSES:
            for i in range(100, 103):
                image = render_pixels(cfg, label, i)
                batch, _ = prepare(image, m.input)
                p_one, p_every = (s.run(["class_probs"], {engine.input_name: batch})[0][0] for s in (one, every))
                got = runner.infer(image).class_probs
                if got is not None:
                    flagged += 1
                    np.testing.assert_allclose(got, p_every if p_one.max() < below else p_one, atol=1e-5)
    assert flagged >= 6, flagged
    # the averaged engine is the mean over the 8 flips and turns of the single-view engine
    batch, _ = prepare(render_pixels(cfg, "pit", 100), m.input)
    turned = [batch, batch[..., ::-1], batch[..., ::-1, :], batch[..., ::-1, ::-1]]
    turned += [np.swapaxes(b, -1, -2) for b in turned]
    mean = np.mean([one.run(["class_probs"], {engine.input_name: np.ascontiguousarray(b)})[0][0] for b in turned], 0)
    np.testing.assert_allclose(every.run(["class_probs"], {views.input_name: batch})[0][0], mean, atol=1e-5)
