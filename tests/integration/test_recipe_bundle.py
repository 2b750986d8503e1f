"""A bundle trained with the recipe defaults (aspect kept with the short side at input_size_px, stage3 +
stage5, bank = 10 % of every patch by greedy coreset, image score = mean of the 10 largest patch
distances) runs on the edge unchanged (``BundleRunner``, ``lineguard score``) and scores exactly like
the training side's torch scorer refitted with the same settings (docs/anomaly-model.md)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pipeline = pytest.importorskip("lineguard_models.pipeline")
synth = pytest.importorskip("lineguard_models.synth")

from lineguard.bundle import Bundle  # noqa: E402
from lineguard.cli import main  # noqa: E402
from lineguard.engines import BundleRunner, OrtEngineConfig  # noqa: E402
from lineguard.preprocess import prepare  # noqa: E402
from lineguard_models.anomaly import batched, fit_anomaly_model  # noqa: E402
from lineguard_models.data import scan_dataset  # noqa: E402

CFG = dict(input_size_px=64, min_holdout=5, seed=1, golden_good=1, golden_defect=1)  # recipe knobs: defaults


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    root = tmp_path_factory.mktemp("recipe")
    data = root / "data"
    synth.write_dataset(data, synth.SynthConfig(width_px=192, height_px=64, n_good=14, n_defect_per_class=4,
                                                defect_classes=("scratch",)))
    bundle = pipeline.train(data, root / "bundle", pipeline.TrainConfig(**CFG), progress=lambda _m: None)
    return bundle, data


def test_defaults_keep_the_aspect_and_size_the_bank_by_the_patches(trained: tuple[Bundle, Path]) -> None:
    m = trained[0].manifest
    assert (m.input.input_width, m.input.input_height) == (192, 64)  # long frame, short side 64: not squashed
    spec = m.provenance["anomaly_model"]
    assert tuple(spec["stages"]) == ("stage3", "stage4") and spec["image_score"] == "topk_mean"
    assert spec["neighbourhood_cells"] == 1
    assert spec["score_top_k"] == 10
    patches = m.provenance["train_images"] * (64 // 8) * (192 // 8)
    assert m.provenance["bank_rows"] == math.ceil(0.1 * patches)


def test_edge_scores_match_the_training_side_torch_scorer(trained: tuple[Bundle, Path]) -> None:
    bundle, data = trained
    cfg = pipeline.TrainConfig(**CFG)
    ds = scan_dataset(data)
    fitted, _ = pipeline.split_good(ds, cfg)
    spec = bundle.manifest.input
    batches = (prepare(ds.load(s), spec)[0] for s in fitted)
    scorer = fit_anomaly_model(batched(batches, 8), config=pipeline.anomaly_model_config(cfg, spec),
                               channels=spec.channels, max_value=spec.max_value)
    assert scorer.bank_rows == bundle.manifest.provenance["bank_rows"]  # same seed, same bank
    others = [s for s in ds.samples if s not in fitted]
    with BundleRunner.from_bundle(bundle, OrtEngineConfig(intra_op_threads=1)) as runner, torch.inference_mode():
        edge = np.array([runner.infer(ds.load(s)).anomaly_score for s in others])
        ours = np.array([float(scorer(torch.from_numpy(prepare(ds.load(s), spec)[0]))[0].max()) for s in others])
    np.testing.assert_allclose(edge, ours, rtol=1e-4, atol=1e-4)
    good = np.array([s.label == "good" for s in others])
    assert edge[~good].min() > np.median(edge[good])  # scratches score above the typical good part


def test_lineguard_score_runs_the_bundle_unchanged(trained: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, data = trained
    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(bundle.root), "--out", str(out), "--threads", "1", str(data)]) == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 + 4 and {r["verdict"] for r in rows} <= {"accept", "reject", "recheck"}
