"""Out-of-fold calibration (TrainConfig.calibration_folds): every fitted good image calibrates with a
score from a bank that never saw it; fitted images never become golden tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from lineguard.errors import DatasetError
from lineguard.imageio import read_image
from lineguard_models.bundle_files import read_scores
from lineguard_models.crossfit import fold_of
from lineguard_models.data import scan_dataset
from lineguard_models.ortscore import OrtScorer, file_sha256
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.synth import SynthConfig, write_dataset

N_GOOD = 12


def test_folds_are_balanced_seeded_and_cover_every_image(tmp_path: Path) -> None:
    write_dataset(tmp_path, SynthConfig(n_good=10, n_defect_per_class=1, defect_classes=("pit",), seed=1))
    goods = scan_dataset(tmp_path).good()
    f = fold_of(goods, 3, seed=4)
    assert sorted(np.bincount(f).tolist()) == [3, 3, 4]
    assert f == fold_of(goods, 3, seed=4) and f != fold_of(goods, 3, seed=5)
    with pytest.raises(ValidationError):
        TrainConfig(calibration_folds=1)


def test_every_good_image_calibrates_out_of_fold(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, SynthConfig(n_good=N_GOOD, n_defect_per_class=5, defect_classes=("scratch",), seed=3))
    # every patch in the bank (bank_fraction 1.0, a cap above all patches): the final bank scores its own images at 0
    cfg = TrainConfig(input_size_px=64, bank_size=4096, bank_fraction=1.0, seed=2, calibration_folds=3, golden_good=2,
                      golden_defect=2)
    bundle = train(data, tmp_path / "bundle", cfg, progress=lambda _: None)
    m = bundle.manifest
    assert m.provenance["train_images"] == N_GOOD  # nothing held back from fitting
    assert m.calibration["images"] == {"good": N_GOOD, "scratch": 5}  # ... and every good image calibrates
    # no good image is held out of every bank, so the folds' bias cannot be measured and nothing is rescaled
    assert m.provenance["out_of_fold_bias"] == {"factor": 1.0, "pairs": 0, "applied": False,
                                                "why": "0 held-out good images scored by both banks (fewer than 5)"}
    trained = set(m.provenance["training_image_sha256"])
    assert all(g.label != "good" for g in m.golden)  # a fitted image is never a golden test
    # each out-of-fold score comes from a bank without the image: clearly above the final bank's own
    # score of it (the final bank holds its patches, so that one is 0 up to float rounding)
    ds = scan_dataset(data)
    by_rel = {s.rel: s for s in ds.good()}
    scorer = OrtScorer(bundle.path(m.engines["anomaly"].file), m.input)
    goods = [s for s in read_scores(bundle) if s.label == "good"]
    assert {s.sha256 for s in goods} == trained
    in_sample = np.array([scorer.score(read_image(by_rel[s.rel].path)) for s in goods])
    oof = np.array([s.score for s in goods])
    assert np.all(oof > in_sample)
    assert np.median(oof) > 2 * np.median(in_sample)


def test_more_folds_than_good_images_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", SynthConfig(n_good=4, n_defect_per_class=2, defect_classes=("pit",), seed=1))
    cfg = TrainConfig(input_size_px=64, bank_size=32, calibration_folds=5)
    with pytest.raises(DatasetError, match="folds"):
        train(tmp_path / "d", tmp_path / "b", cfg, progress=lambda _: None)


def test_cli_passes_calibration_folds_and_refuses_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lineguard.cli import main

    write_dataset(tmp_path / "d", SynthConfig(n_good=4, n_defect_per_class=2, defect_classes=("pit",), seed=1))
    base = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "b"), "--input-size", "64"]
    assert main([*base, "--calibration-folds", "1"]) != 0  # one fold is no out-of-fold score
    assert "calibration_folds" in capsys.readouterr().err
    assert main([*base, "--calibration-folds", "5"]) != 0  # more folds than good images: refused before training
    assert "folds" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("folds", [0, 3])
def test_fit_only_goods_are_fitted_and_never_calibrate(tmp_path: Path, folds: int) -> None:
    """Goods listed in fit_only.txt (chosen for their score by the data loop) join the bank and are
    neither held out nor scored for calibration, with held-out and with out-of-fold calibration."""
    from lineguard_models.data import FIT_ONLY_FILE
    from lineguard_models.pipeline import split_good

    data = tmp_path / "data"
    write_dataset(data, SynthConfig(n_good=N_GOOD, n_defect_per_class=5, defect_classes=("scratch",), seed=3))
    goods = sorted(s.rel for s in scan_dataset(data).good())
    listed = set(goods[:4])
    (data / FIT_ONLY_FILE).write_text("".join(f"{g}\n" for g in sorted(listed)), encoding="utf-8")
    cfg = TrainConfig(input_size_px=64, bank_size=256, seed=2, calibration_folds=folds, golden_good=1,
                      golden_defect=1, holdout_fraction=0.5)
    ds = scan_dataset(data)
    fitted, held = split_good(ds, cfg)
    assert listed <= {s.rel for s in fitted} and not listed & {s.rel for s in held}
    bundle = train(data, tmp_path / "bundle", cfg, progress=lambda _: None)
    m = bundle.manifest
    calibrated = {s.rel for s in read_scores(bundle) if s.label == "good"}
    assert not calibrated & listed
    n_rest = N_GOOD - len(listed)
    if folds:  # every other good fits and calibrates out-of-fold
        assert m.provenance["train_images"] == N_GOOD and m.calibration["images"]["good"] == n_rest
    else:  # max(min_holdout 5, half of the 8 others) are held out; the listed ones always fit
        assert m.calibration["images"]["good"] == 5
        assert m.provenance["train_images"] == N_GOOD - 5


def test_fold_bias_rescales_out_of_fold_goods_by_the_measured_ratio(tmp_path: Path) -> None:
    """Goods held out of every bank are scored by a fold's bank and by the final bank; the median ratio
    scales the out-of-fold scores (rescaled: test_fold_bias); the held-out goods keep the final bank's score."""
    data = tmp_path / "data"
    write_dataset(data, SynthConfig(n_good=20, n_defect_per_class=5, defect_classes=("scratch",), seed=3))
    cfg = TrainConfig(input_size_px=64, bank_size=4096, bank_fraction=1.0, seed=2, calibration_folds=3, max_good=12,
                      golden_good=1, golden_defect=1)
    bundle = train(data, tmp_path / "bundle", cfg, progress=lambda _: None)
    bias = bundle.manifest.provenance["out_of_fold_bias"]
    assert bias["pairs"] == 8  # the 20 - 12 goods no bank was fitted on
    # a bank with every patch of 12 goods scores a new good lower than one with 8 of them
    assert 0.5 <= bias["factor"] < 1.0 and bias["applied"] and bias["factor"] == round(bias["median_ratio"], 4)
    ds = scan_dataset(data)
    m = bundle.manifest
    scorer = OrtScorer(bundle.path(m.engines["anomaly"].file), m.input)
    fitted = {file_sha256(s.path) for s in ds.good()} & set(m.provenance["training_image_sha256"])
    rows = [s for s in read_scores(bundle) if s.label == "good"]
    held = [s for s in rows if s.sha256 not in fitted]
    assert len(held) == 8 and len(rows) == 20
    by_rel = {s.rel: s for s in ds.good()}
    for s in held:  # held-out goods keep the final bank's own score
        assert s.score == pytest.approx(scorer.score(read_image(by_rel[s.rel].path)), rel=1e-5)
