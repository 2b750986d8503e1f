"""Retrain never forgets: the gate refuses a candidate trained without one class's history.

History in the dataset store: good parts, scratches, and faint stains (a rare class whose images
score close to good parts). The active bundle was calibrated with stains, so it sends them to
recheck/reject. A candidate trained without the stain history calibrates its accept threshold on
scratches alone and lets stains through: the gate must refuse it and name the class. A candidate
trained on the whole history passes. Then the backtest replays frames the line stored in a sink
through the refused candidate and predicts the extra escapes. Three tiny trainings (64 px, bank 32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lineguard.bundle import load_bundle
from lineguard.imageio import read_image
from lineguard.sink.labels import LabelBook
from lineguard_models.backtest import Judge, backtest, collect_stream
from lineguard_models.calibration import CalibrationPolicy
from lineguard_models.commands import retrain as retrain_cmd
from lineguard_models.datastore import DatasetStore
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.retrain import GateConfig, retrain
from lineguard_models.synth import SynthConfig, write_dataset

# The scenario (synthetic, seeded): stains at strength 0.35 score above the good parts but below every
# scratch. The line's policy keeps the accept threshold at the calibration scores (escape_tail "observed"):
# with the default modelled tail, 4 calibrating scratches alone already pull the candidate's accept
# threshold down past the stains (measured: both bundles catch them), which protects the line but leaves
# nothing forgotten to test the gate with. The candidate inherits that policy from the active bundle
# (``lineguard retrain`` keeps the line's calibration policy unless told otherwise).
TINY = TrainConfig(input_size_px=64, bank_size=32, golden_good=1, golden_defect=1,
                   policy=CalibrationPolicy(escape_tail="observed"))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("retrain")
    write_dataset(base / "main", SynthConfig(n_good=24, n_defect_per_class=6, defect_classes=("scratch",), seed=3))
    write_dataset(base / "stain", SynthConfig(n_good=0, n_defect_per_class=9, defect_classes=("stain",), seed=4,
                                              defect_strength=0.35))
    store = DatasetStore.open(base / "store")
    store.import_folder(base / "main")
    store.import_folder(base / "stain")
    store.materialize(base / "v2")
    train(base / "v2", base / "active", TINY, progress=lambda s: None)
    return {"base": base, "store": base / "store", "active": base / "active", "stain": base / "stain"}


@pytest.fixture(scope="module")
def forgetful(history: dict[str, Path]) -> Path:
    """Retrain through the CLI module, leaving the stain history out of training."""
    p = argparse.ArgumentParser()
    retrain_cmd.add_arguments(p)
    out = history["base"] / "forgetful"
    args = p.parse_args(["--datastore", str(history["store"]), "--active", str(history["active"]), "--out", str(out),
                         "--exclude-class", "stain", "--input-size", "64", "--bank-size", "32"])
    assert retrain_cmd.run(args) == retrain_cmd.EXIT_REFUSED
    return out


def test_gate_refuses_a_candidate_that_forgot_a_class(history: dict[str, Path], forgetful: Path) -> None:
    assert not forgetful.exists()
    refused = forgetful.with_name("forgetful.refused")
    load_bundle(refused)  # kept for inspection, verified, but not where a changeover would find it
    doc = json.loads(forgetful.with_name("forgetful.retrain-report.json").read_text())
    assert doc["passed"] is False and doc["excluded_classes"] == ["stain"]
    assert any(r.startswith("class stain: recall 100%") for r in doc["reasons"]), doc["reasons"]
    assert not any("scratch" in r for r in doc["reasons"])
    # every class ever seen is in the regression set, stain included, and none of it was trained on
    reg = DatasetStore.open(history["store"]).snapshot().select("regression")
    assert {r.label for r in reg} == {"good", "scratch", "stain"}
    trained = set(load_bundle(refused).manifest.provenance["training_image_sha256"])
    assert load_bundle(refused).manifest.thresholds.policy["escape_tail"] == "observed"  # the line's policy kept
    assert not trained & {r.sha256 for r in reg}
    assert "REFUSED" in forgetful.with_name("forgetful.retrain-report.md").read_text()


def test_candidate_with_whole_history_passes(history: dict[str, Path]) -> None:
    out = history["base"] / "full"
    res = retrain(history["store"], history["active"], out, train_cfg=TINY,
                  gate_cfg=GateConfig(recall_tolerance=0.05, false_reject_tolerance=0.0), progress=lambda s: None)
    assert res.decision.passed, res.decision.reasons
    assert res.candidate_path == out and load_bundle(out).manifest.calibration["images"]["stain"] >= 1
    assert res.candidate.recall("stain") == 1.0 and res.candidate.class_images["stain"] == 3


def test_backtest_predicts_the_extra_escapes(history: dict[str, Path], forgetful: Path) -> None:
    """The line (active bundle) stores stain frames in its sink; a person labels them; the backtest of
    the refused candidate shows stains the line caught that the candidate would accept."""
    sink = history["base"] / "sink"
    stains = sorted((history["stain"] / "stain").glob("*.png"))
    judge = Judge.from_dir(history["active"], with_map=True)
    collected = collect_stream(judge, ((read_image(p), str(p)) for p in stains), sink, audit_fraction=1.0)
    judge.close()
    assert len(collected) == 9 and all(k is not None for _, _, k in collected)
    book = LabelBook.open(sink)
    for f in book.unlabelled():
        book.label(f.message_id, "stain", labeller="test")
    book.close()
    report = backtest(forgetful.with_name("forgetful.refused"), sink, audit_fraction=1.0)
    n, old, new = report.per_class_escapes["stain"]
    assert (n, report.labelled) == (9, 9)
    assert old == 0 and new > old  # the line caught every stain; the candidate lets some through
    assert report.new.escapes - report.old.escapes == new
    assert "escapes (labelled)" in report.to_markdown()
