"""End to end: synthetic dataset -> lineguard train -> verified bundle, scored with ONNX Runtime.

One small bundle (mono 8 bit, 1x2 tiles, 96 px input, bank 64) is trained once per module through
the real CLI; the tests then check what the edge relies on and that tampered bundles are refused.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lineguard.bundle import load_bundle
from lineguard.cli import main
from lineguard.errors import BundleError
from lineguard.imageio import read_image
from lineguard_models.data import scan_dataset
from lineguard_models.ortscore import OrtScorer
from lineguard_models.synth import SynthConfig, write_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("train")
    data = base / "data"
    write_dataset(data, SynthConfig(n_good=16, n_defect_per_class=4, defect_classes=("scratch", "pit"), seed=3))
    out = base / "bundle"
    rc = main(["train", "--data", str(data), "--out", str(out), "--input-size", "96", "--tiles", "1x2",
               "--bank-size", "64", "--seed", "1", "--product", "demo part", "--recipe", "7"])
    assert rc == 0
    return data, out


def test_bundle_verifies_and_records_provenance(trained: tuple[Path, Path]) -> None:
    data, out = trained
    b = load_bundle(out)
    m = b.manifest
    assert m.product == "demo part" and m.recipe == 7 and m.bundle_id.startswith("demo-part-")
    # 128x96 frames in 1x2 tiles -> 64x96 tiles -> short side 96 -> 96x128 input (aspect kept, multiples of 32)
    assert (m.input.channels, m.input.dtype, m.input.max_value) == (1, "uint8", 255)
    assert (m.input.input_width, m.input.input_height) == (96, 128)
    assert (m.input.image_width, m.input.image_height) == (128, 96)
    assert m.input.tiles.count == 2
    assert m.engines["anomaly"].outputs == {"score": "anomaly_score", "map": "anomaly_map"}
    assert m.provenance["dataset"]["fingerprint"] == scan_dataset(data).fingerprint
    assert m.provenance["seed"] == 1 and "onnxruntime" in m.provenance["versions"]
    assert m.provenance["train_images"] == 16 - 5  # min_holdout 5 good held out
    assert m.calibration["images"] == {"good": 5, "pit": 4, "scratch": 4}
    assert m.calibration["mode"] == "defects"
    assert any("only 4 images" in w for w in m.calibration["warnings"])
    assert {"report/report.md", "report/roc.png", "report/hist_pit.png", SCORES} <= set(m.files)


SCORES = "report/scores.csv"


def test_never_calibrated_on_training_images(trained: tuple[Path, Path]) -> None:
    _, out = trained
    m = load_bundle(out).manifest
    with (out / SCORES).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13
    assert not {r["sha256"] for r in rows} & set(m.provenance["training_image_sha256"])
    assert len(m.provenance["training_image_sha256"]) == 11


def test_golden_images_reproduce_with_onnx_runtime(trained: tuple[Path, Path]) -> None:
    _, out = trained
    b = load_bundle(out)
    m = b.manifest
    assert len(m.golden) >= 3 and {g.label for g in m.golden} >= {"good"}
    scorer = OrtScorer(b.path(m.engines["anomaly"].file), m.input)
    for g in m.golden:
        img = read_image(b.path(g.file))  # lossless PNG, mono stays mono
        assert img.ndim == 2 and img.dtype == np.uint8
        score = scorer.score(img)
        assert score == pytest.approx(g.expected_score, rel=1e-5)
        lo, hi = m.thresholds.lower, m.thresholds.upper
        verdict = "reject" if score >= hi else ("accept" if score < lo else "recheck")
        assert verdict == g.expected_verdict


def test_synthetic_defects_separate(trained: tuple[Path, Path]) -> None:
    _, out = trained
    classes = load_bundle(out).manifest.calibration["classes"]
    # the rendered defects are obvious; a model that cannot separate them is broken
    assert all(c["auroc"] >= 0.9 for c in classes.values()), classes


def _copy(out: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def test_changed_byte_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    b = _copy(trained[1], tmp_path)
    onnx = b / "anomaly.onnx"
    raw = bytearray(onnx.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    onnx.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"anomaly.onnx: sha256 mismatch"):
        load_bundle(b)


def test_missing_and_extra_files_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    b = _copy(trained[1], tmp_path)
    golden = next((b / "golden").iterdir())
    golden.unlink()
    (b / "report" / "notes.txt").write_text("added later")
    with pytest.raises(BundleError) as err:
        load_bundle(b)
    assert f"golden/{golden.name}: missing" in str(err.value)
    assert "report/notes.txt: not listed in the manifest" in str(err.value)


@pytest.mark.parametrize("value", ["NaN", None])
def test_nan_or_missing_threshold_refused(trained: tuple[Path, Path], tmp_path: Path, value: str | None) -> None:
    b = _copy(trained[1], tmp_path)
    text = (b / "manifest.json").read_text()
    doc = json.loads(text)
    if value is None:
        del doc["thresholds"]["upper"]
        (b / "manifest.json").write_text(json.dumps(doc))
        match = r"thresholds.upper: Field required"
    else:
        lower = json.dumps(doc["thresholds"]["lower"])
        (b / "manifest.json").write_text(text.replace(f'"lower": {lower}', '"lower": NaN', 1))
        match = r"thresholds.*finite"
    with pytest.raises(BundleError, match=match):
        load_bundle(b)


def test_existing_out_refused(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, out = trained
    assert main(["train", "--data", str(data), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_bad_datasets_fail_with_the_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_dataset(data, SynthConfig(n_good=6, n_defect_per_class=1, defect_classes=("pit",)))
    (data / "good" / "zero.png").write_bytes(b"")
    (data / "pit" / "bad.bmp").write_bytes(b"BM garbage")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "good/zero.png (empty file)" in err and "pit/bad.bmp" in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))
    shutil.rmtree(data / "good")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b")]) == 1
    assert "no 'good' folder" in capsys.readouterr().err
