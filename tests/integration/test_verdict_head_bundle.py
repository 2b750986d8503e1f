"""A bundle with a verdict head: trained by ``lineguard train`` on generated data, run by the edge unchanged.

The head's opinion lives inside ``anomaly.onnx`` (``verdict_head.FusedScorer``), so the edge needs no
change: its golden self-test passes on the fused graph. Calibration used out-of-fold fused scores (the head
that scored a calibration image never saw it), so ``report/scores.csv`` differs from what the exported head,
fitted on every image, gives those images; a line without enough defect images, or with the head switched
off, keeps the plain engine and says why. The plain engine's scores are kept beside the fused ones, so
``lineguard calibrate`` moves the accept ceiling with new defect images (the bank's score from a graph derived from
the fused one).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from lineguard.bundle import Bundle, load_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.engines.selftest import run_golden
from lineguard.imageio import read_image
from lineguard_models.bundle_files import read_scores
from lineguard_models.calibration import CalibrationPolicy, calibrate
from lineguard_models.ortscore import OrtScorer
from lineguard_models.pipeline import TrainConfig, recalibrate, train
from lineguard_models.synth import SynthConfig, write_dataset
from lineguard_models.verdict_head import (
    VerdictHeadConfig,
    harms,
    plain_score_model,
    recalibrated_ceiling,
    recalibration_scorer,
)

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


def _plain_calibration(bundle: Bundle) -> float:
    """The accept threshold the plain engine's scores in ``report/scores.csv`` give with the default targets."""
    with bundle.path("report/scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["score"]) >= float(r["plain_score"]) * (1 - 1e-6) for r in rows)  # head only raises
    defects: dict[str, list[float]] = {}
    for r in rows:
        if r["label"] != "good":
            defects.setdefault(r["label"], []).append(float(r["plain_score"]))
    return calibrate([float(r["plain_score"]) for r in rows if r["label"] == "good"], defects,
                     CalibrationPolicy(), quiet=True).lower


def test_the_plain_engines_scores_are_kept_and_its_graph_derived_from_the_fused_one(fused: Bundle, data: Path,
                                                                                   tmp_path: Path) -> None:
    # report/scores.csv keeps the plain engine's score beside the fused one; they give training's accept ceiling
    assert _plain_calibration(fused) == pytest.approx(fused.manifest.provenance["verdict_head"]["accept_ceiling"])
    # the graph derived from the fused one scores as the plain engine trained on the same images and seed does
    plain_out = tmp_path / "plain"
    train(data, plain_out, CFG.model_copy(update={"verdict_head": VerdictHeadConfig(enabled=False)}),
          progress=lambda _m: None)
    plain = load_bundle(plain_out)
    derived = OrtScorer(plain_score_model(fused.path("anomaly.onnx"), tmp_path / "derived.onnx"), fused.manifest.input,
                        plain_output="bank_score")
    runner, fused_runner = BundleRunner.from_bundle(plain, CPU), BundleRunner.from_bundle(fused, CPU)
    for f in sorted((data / "pit").iterdir())[:3] + sorted((data / "good").iterdir())[:2]:
        image = read_image(f)
        tiles, bank = derived.scores(image)  # one run gives both: the fused score as the bundle's graph gives it
        assert bank is not None and bank == pytest.approx(runner.infer(image).anomaly_score, rel=1e-4)
        fused_score = fused_runner.infer(image).anomaly_score
        assert float(tiles[0]) == pytest.approx(fused_score, rel=1e-5) and fused_score >= bank * (1 - 1e-4)


def test_recalibration_moves_the_accept_ceiling_with_the_new_defect_images(fused: Bundle, tmp_path: Path) -> None:
    more = tmp_path / "more"  # new defect images of both classes, no goods: lineguard calibrate's usual input
    write_dataset(more, SynthConfig(n_good=0, n_defect_per_class=10, defect_classes=("scratch", "pit"),
                                    defect_strength=0.4, seed=6))
    out = recalibrate(fused.root, more, tmp_path / "recal", progress=lambda _m: None)
    rec = out.manifest.provenance["accept_ceiling"]
    old = fused.manifest.thresholds.policy["accept_ceiling"]
    assert rec["from"] == pytest.approx(old) and rec["why"].startswith("recalibrated from the plain engine")
    new = _plain_calibration(out)  # every plain score, previous and new, with the line's targets
    assert rec["to"] == pytest.approx(new) and out.manifest.thresholds.policy["accept_ceiling"] == pytest.approx(new)
    assert out.manifest.thresholds.lower <= new + 1e-9
    assert run_golden(BundleRunner.from_bundle(out, CPU), out) == []  # the edge runs the recalibrated bundle as is
    with out.path("report/scores.csv").open() as f:
        assert sum(1 for r in csv.DictReader(f) if r["label"] != "good") == 16 + 20
    # a bundle from before the plain scores were kept: the ceiling stays, and the record says why
    previous = [replace(s, plain=None) for s in read_scores(fused)]
    scorer, kept = recalibration_scorer(fused.path("anomaly.onnx"), fused.manifest.input, previous)
    assert scorer.plain_output is None and kept is not None  # new images get the fused score alone
    policy, why = recalibrated_ceiling(previous, CalibrationPolicy(accept_ceiling=old), kept, lambda _m: None)
    assert policy.accept_ceiling == old and "no plain_score column" in why["why"]
