"""The edge engines on a bundle trained by the project's own training pipeline (torch -> ONNX).

The training side scores its calibration and golden images with its own ONNX Runtime scorer; here
the edge's BundleRunner (tiles, tile max, names from the manifest) must reproduce them, the map
must stitch back to the frame size, and ``score`` / ``check-bundle`` must work on the real thing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pipeline = pytest.importorskip("lineguard_models.pipeline")
synth = pytest.importorskip("lineguard_models.synth")

from lineguard.bundle import Bundle  # noqa: E402
from lineguard.cli import main  # noqa: E402
from lineguard.engines import BundleRunner, OrtEngineConfig, run_golden  # noqa: E402
from lineguard.imageio import read_image  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    synth.write_dataset(data, synth.SynthConfig(n_good=16, n_defect_per_class=5, defect_classes=("scratch", "pit")))
    cfg = pipeline.TrainConfig(input_size_px=64, bank_size=64, min_holdout=6, seed=3)
    bundle = pipeline.train(data, root / "bundle", cfg, progress=lambda _msg: None)
    return bundle, data


def test_edge_runner_reproduces_the_training_side_golden_scores(trained: tuple[Bundle, Path]) -> None:
    bundle, _ = trained
    with BundleRunner.from_bundle(bundle, OrtEngineConfig(intra_op_threads=1), with_map=True) as runner:
        runner.warmup()
        assert run_golden(runner, bundle) == []
        golden = bundle.manifest.golden[0]
        image = read_image(bundle.path(golden.file))
        out = runner.infer(image)
        suspect = next(g for g in bundle.manifest.golden if g.expected_verdict != "accept")
        suspect_image = read_image(bundle.path(suspect.file))
        suspect_out = runner.infer(suspect_image)
    assert out.anomaly_score == pytest.approx(golden.expected_score, rel=1e-5)
    # the map is stitched for parts that may be defective (publisher, labelling), not for accepted ones
    assert suspect_out.anomaly_map is not None and suspect_out.anomaly_map.shape == suspect_image.shape[:2]
    if golden.expected_verdict == "accept":
        assert out.anomaly_map is None
    assert np.isfinite(suspect_out.anomaly_map).all()


def test_score_and_check_bundle_on_a_trained_bundle(trained: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, data = trained
    assert main(["check-bundle", str(bundle.root)]) == 0
    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(bundle.root), "--out", str(out), str(data)]) == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 + 2 * 5
    good = [float(r["anomaly_score"]) for r in rows if "/good/" in r["path"]]
    defect = [float(r["anomaly_score"]) for r in rows if "/good/" not in r["path"]]
    assert np.median(defect) > np.median(good)  # the model separates what it was calibrated on
    assert {r["verdict"] for r in rows} <= {"accept", "reject", "recheck"}
