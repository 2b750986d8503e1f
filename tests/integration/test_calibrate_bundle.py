"""lineguard calibrate: new thresholds from new images with the bundle's own ONNX, no retraining."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from lineguard.bundle import MANIFEST, load_bundle
from lineguard.cli import main
from lineguard_models.synth import SynthConfig, write_dataset


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cal")
    data = base / "data"
    write_dataset(data, SynthConfig(n_good=14, n_defect_per_class=3, defect_classes=("crack",), seed=5))
    out = base / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--input-size", "96", "--bank-size", "64"]) == 0
    return data, out


def _rows(b: Path) -> list[dict[str, str]]:
    with (b / "report" / "scores.csv").open() as f:
        return list(csv.DictReader(f))


def test_new_defect_images_only(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    _, old = bundle
    before = load_bundle(old).manifest
    new = tmp_path / "new"
    # defect-only folder (no good/): a different seed renders different parts; a new class too
    write_dataset(new, SynthConfig(n_good=0, n_defect_per_class=4, defect_classes=("crack", "stain"), seed=99))
    out = tmp_path / "b2"
    assert main(["calibrate", "--bundle", str(old), "--data", str(new), "--out", str(out),
                 "--escape-target", "0.1", "--escape-tail", "observed"]) == 0
    after = load_bundle(out).manifest
    assert after.bundle_id != before.bundle_id
    assert after.provenance["recalibrated_from"] == before.bundle_id
    assert after.calibration["images"] == {"good": 5, "crack": 7, "stain": 4}
    assert after.thresholds.policy["escape_target"] == 0.1
    assert after.thresholds.policy["escape_tail"] == "observed" and before.thresholds.policy["escape_tail"] == "model"
    assert after.thresholds.policy["false_reject_budget"] == before.thresholds.policy["false_reject_budget"]
    # same graph, same golden images and scores; the old bundle is untouched
    assert after.files["anomaly.onnx"] == before.files["anomaly.onnx"]
    # engine entries are carried over as written: no new default keys an older edge would refuse
    raw = [json.loads((b / MANIFEST).read_text())["engines"] for b in (old, out)]
    assert raw[1] == raw[0]
    assert [g.expected_score for g in after.golden] == [g.expected_score for g in before.golden]
    assert load_bundle(old).manifest.bundle_id == before.bundle_id
    old_rows = {r["sha256"]: r["score"] for r in _rows(old)}
    assert all(old_rows[r["sha256"]] == r["score"] for r in _rows(out) if r["sha256"] in old_rows)


def test_images_already_seen_are_not_counted_twice(bundle: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, old = bundle
    copy = tmp_path / "b"
    shutil.copytree(old, copy)
    # the training dataset: its good images were trained on or already scored, its defects scored
    assert main(["calibrate", "--bundle", str(copy), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "no images that are new" in err
    assert load_bundle(copy).manifest.bundle_id == load_bundle(old).manifest.bundle_id


def test_in_place_replacement_and_mismatched_camera(bundle: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, old = bundle
    copy = tmp_path / "b"
    shutil.copytree(old, copy)
    rgb = tmp_path / "rgb"
    write_dataset(rgb, SynthConfig(n_good=2, n_defect_per_class=2, channels=3, defect_classes=("pit",)))
    assert main(["calibrate", "--bundle", str(copy), "--data", str(rgb)]) == 1
    assert "expects 1-channel uint8" in capsys.readouterr().err
    more = tmp_path / "more"
    write_dataset(more, SynthConfig(n_good=6, n_defect_per_class=2, defect_classes=("pit",), seed=42))
    assert main(["calibrate", "--bundle", str(copy), "--data", str(more)]) == 0
    m = load_bundle(copy).manifest
    assert m.calibration["images"] == {"good": 11, "crack": 3, "pit": 2}
    assert not list(tmp_path.glob(".b.*"))  # no staging or trash left behind
