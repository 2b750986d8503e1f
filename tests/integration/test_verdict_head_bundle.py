"""A bundle with a verdict head: trained by ``lineguard train`` on generated data, run by the edge unchanged.

The head's opinion lives inside ``anomaly.onnx`` (``verdict_head.FusedScorer``), so the edge needs no
change: its golden self-test passes on the fused graph. Calibration used out-of-fold fused scores (the head
that scored a calibration image never saw it), so ``report/scores.csv`` differs from what the exported head,
fitted on every image, gives those images; a line without enough defect images, or with the head switched
off, keeps the plain engine and says why.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lineguard.bundle import Bundle, load_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.engines.selftest import run_golden
from lineguard.imageio import read_image
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.synth import SynthConfig, write_dataset
from lineguard_models.verdict_head import VerdictHeadConfig, harms

CPU = OrtEngineConfig(intra_op_threads=1)
SYNTH = SynthConfig(n_good=20, n_defect_per_class=8, defect_classes=("scratch", "pit"), defect_strength=0.4, seed=5)
# every good image calibrates out of fold (as automatic configuration does); 20 goods, so the head's floor is lowered
CFG = TrainConfig(input_size_px=64, bank_size=64, calibration_folds=3, seed=1,
                  verdict_head=VerdictHeadConfig(min_goods=15))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vh") / "data"
    write_dataset(root, SYNTH)
    return root


@pytest.fixture(scope="module")
def fused(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("vh_bundle") / "bundle"
    train(data, out, CFG, progress=lambda _m: None)
    return load_bundle(out)


def test_the_head_is_chosen_out_of_fold_and_recorded(fused: Bundle) -> None:
    rec = fused.manifest.provenance["verdict_head"]
    assert rec["applied"] is True and rec["weight"] > 0 and rec["stages"] == ["stage3", "stage4"]
    assert rec["clip_logit"] == [0.0, 8.0]  # it only raises scores
    assert rec["images"] == {"good": 20, "defect": 16}
    table = {r["weight"]: r for r in rec["oof_auroc_by_weight"]}
    assert sorted(table) == [0.0, 1.0, 2.0]
    n = 20 + 16  # the largest weight whose share of decided calibration images the calibration shows no harm in
    assert rec["weight"] == max(w for w, r in table.items()
                                if not harms(r["oof_automated"], table[0.0]["oof_automated"], n))
    assert rec["scale"] == pytest.approx(rec["goods_log_score_sd"] * rec["weight"] / 4, rel=1e-3)
    th = fused.manifest.thresholds  # the plain engine's accept threshold caps the bundle's
    assert th.policy["accept_ceiling"] == rec["accept_ceiling"] and th.lower <= rec["accept_ceiling"]
    md = fused.path("report/report.md").read_text(encoding="utf-8")  # the line engineer's page says so
    assert f"verdict head: weight {rec['weight']:g} on stage3+stage4 pooled features" in md


def test_the_edge_runs_the_fused_graph_unchanged_and_calibration_was_out_of_fold(fused: Bundle, data: Path) -> None:
    runner = BundleRunner.from_bundle(fused, CPU)
    assert run_golden(runner, fused) == [] and len(fused.manifest.golden) >= 2
    with fused.path("report/scores.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != "good"]
    moved = 0
    for r in rows:  # the final head saw every calibration defect; the calibration score came from one that did not
        edge = runner.infer(read_image(data / r["file"])).anomaly_score
        moved += abs(edge - float(r["score"])) > 1e-4 * abs(edge)
    assert moved >= len(rows) // 2


@pytest.mark.parametrize(("head", "why"), [
    (VerdictHeadConfig(enabled=False), "disabled"),
    (VerdictHeadConfig(min_goods=15, min_defects=20), "16 labelled defect images, fewer than 20"),
    (VerdictHeadConfig(), "20 calibrating good images, fewer than 30"),
    (VerdictHeadConfig(min_goods=15, weights=(0.0,)), "no head weight kept"),
])
def test_a_line_without_a_head_keeps_the_plain_engine_and_says_why(data: Path, tmp_path: Path, head: VerdictHeadConfig,
                                                                   why: str) -> None:
    out = tmp_path / "bundle"
    train(data, out, CFG.model_copy(update={"verdict_head": head}), progress=lambda _m: None)
    b = load_bundle(out)
    rec = b.manifest.provenance["verdict_head"]
    assert rec["applied"] is False and why in rec["why"]
    runner = BundleRunner.from_bundle(b, CPU)
    with b.path("report/scores.csv").open() as f:  # the plain engine: calibration scores are the edge's own
        for r in [r for r in csv.DictReader(f) if r["label"] != "good"][:4]:
            edge = runner.infer(read_image(data / r["file"])).anomaly_score
            assert edge == pytest.approx(float(r["score"]), rel=1e-4)


def test_lineguard_train_no_verdict_head_keeps_the_plain_engine(data: Path, tmp_path: Path) -> None:
    from lineguard.cli import main

    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--no-auto", "--input-size", "64", "--bank-size",
                 "64", "--calibration-folds", "3", "--no-verdict-head"]) == 0
    rec = load_bundle(out).manifest.provenance["verdict_head"]
    assert rec["applied"] is False and rec["why"].startswith("disabled")
