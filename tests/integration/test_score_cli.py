"""``lineguard score`` and ``lineguard check-bundle`` through the real CLI dispatcher."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.bundle import Bundle
from lineguard.cli import main
from lineguard.engines.synthetic import build_synthetic_bundle
from lineguard.preprocess import TileSpec


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return build_synthetic_bundle(tmp_path_factory.mktemp("b") / "bundle", tiles=TileSpec(rows=1, cols=2))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_score_writes_one_row_per_image_and_flags_unreadable_ones(bundle: Bundle, tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    for g in bundle.manifest.golden:
        shutil.copy(bundle.path(g.file), images / "nested" / Path(g.file).name)
    (images / "corrupt.png").write_bytes(b"\x89PNG not really")
    cv2.imwrite(str(images / "wrong_size.png"), np.zeros((10, 20), np.uint8))
    (images / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "scores.csv"

    rc = main(["score", "--bundle", str(bundle.root), "--out", str(out), str(images), str(tmp_path / "missing")])

    assert rc == 3
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    golden_names = {Path(g.file).name for g in bundle.manifest.golden}
    assert set(rows) == {"corrupt.png", "wrong_size.png", "missing", *golden_names}
    for g in bundle.manifest.golden:
        row = rows[Path(g.file).name]
        assert float(row["anomaly_score"]) == pytest.approx(g.expected_score, rel=1e-4)
        assert row["verdict"] == g.expected_verdict and row["error"] == ""
        assert row["defect_class"] == g.expected_class
        assert float(row["latency_ms"]) > 0
    assert rows["corrupt.png"]["verdict"] == "error" and "decodable" in rows["corrupt.png"]["error"]
    assert rows["wrong_size.png"]["verdict"] == "error" and "expects 128x64" in rows["wrong_size.png"]["error"]
    assert rows["missing"]["verdict"] == "error"
    assert not list(tmp_path.glob(".scores.csv.tmp-*"))


def test_score_exit_zero_when_everything_scored(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    assert main(["score", "--bundle", str(bundle.root), "--out", str(out), str(bundle.root / "golden")]) == 0
    assert len(_rows(out)) == len(bundle.manifest.golden)


def test_check_bundle_ok_names_the_provider(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-bundle", str(bundle.root)]) == 0
    assert "OK synthetic-1: golden self-test passed on CPUExecutionProvider" in capsys.readouterr().out


def test_check_bundle_reports_a_tampered_file(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle.root, copy)
    with (copy / "anomaly.onnx").open("ab") as f:
        f.write(b"\0")
    assert main(["check-bundle", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "anomaly.onnx: sha256 mismatch" in out


def test_check_bundle_reports_missing_gpu_provider(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-bundle", str(bundle.root), "--engine", "cuda"]) == 1
    assert "CUDAExecutionProvider" in capsys.readouterr().out


def test_check_bundle_refuses_a_bundle_without_golden_images(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    b = build_synthetic_bundle(tmp_path / "nogolden", with_classifier=False)
    doc = json.loads((b.root / "manifest.json").read_text())
    doc["golden"] = []
    for name in list(doc["files"]):
        if name.startswith("golden/"):
            (b.root / name).unlink()
            del doc["files"][name]
    (b.root / "golden").rmdir()
    (b.root / "manifest.json").write_text(json.dumps(doc))
    assert main(["check-bundle", str(b.root)]) == 1
    assert "no golden images" in capsys.readouterr().out
