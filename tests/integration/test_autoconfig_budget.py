"""Automatic configuration keeps its time budget, on small generated data with real folds and an
injected clock: every anomaly fit advances the clock by a planted number of seconds (nothing else
does), so the budget's decisions are deterministic and asserted on the recorded seconds and
statuses, never on this machine's wall clock.

Planted: the default fits in 10 s; a candidate that looks the same to the cost model (same input, same
bank) fits in 100 s, so only measuring it in flight can stop it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lineguard.bundle import load_bundle
from lineguard_models import anomaly
from lineguard_models.autobudget import Deadline
from lineguard_models.autoconfig import AutoConfig, Candidate, select, train_auto
from lineguard_models.data import scan_dataset
from lineguard_models.pipeline import TrainConfig

pytestmark = pytest.mark.slow  # real folds on tiny images: about 10-40 s per test on a loaded 2-core box
BASE = TrainConfig(bank_size=64, bank_fraction=None, input_size_px=64, seed=2)
SLOW_TOP_K = 9  # the planted slow candidate's only change (the cost model sees no difference)
FIT_S = {SLOW_TOP_K: 100.0}  # seconds a fit "takes" on the injected clock; else 10
CANDS = [Candidate(name="default", updates={}), Candidate(name="slowfit", updates={"score_top_k": SLOW_TOP_K}),
         Candidate(name="later", updates={"score_top_k": 8})]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.fits: list[float] = []

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def data(auto_line_data: Path) -> Path:
    return auto_line_data


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    real = anomaly.fit_anomaly_model

    def fit(*args: Any, config: Any, **kwargs: Any) -> Any:
        seconds = FIT_S.get(config.score_top_k, 10.0)
        c.now += seconds / 2  # the feature pass
        scorer = real(*args, config=config, **kwargs)
        c.now += seconds / 2  # the coreset selection, after the last feature batch
        c.fits.append(seconds)
        return scorer

    monkeypatch.setattr(anomaly, "fit_anomaly_model", fit)  # autoconfig and pipeline import it when they fit
    yield c


def _select(data: Path, tmp: Path, clock: Clock, budget: float) -> dict[str, Any]:
    auto = AutoConfig(folds=3, time_budget_s=budget, latency_budget_ms=1e4)
    _, _, rec = select(scan_dataset(data), BASE, auto, tmp, progress=lambda _: None, candidates=CANDS,
                       deadline=Deadline(budget, clock))
    return rec


def test_a_candidate_that_overruns_in_flight_is_stopped_after_one_fold(data: Path, tmp_path: Path,
                                                                      clock: Clock) -> None:
    # default: 3 folds x (5 s features + 5 s coreset). Final training: one fit on 12 instead of 8 images into
    # the same 64-row bank -> 5 x 1.5 + 5 x 1.5 = 15 s, the classifier (2 classes of 6) 20 s, the report 5 s:
    # 40 s estimated, 50 s reserved. slowfit is predicted as the default (30 s) and starts with 70 s of search
    # left; its first fold takes 100 s.
    rec = _select(data, tmp_path, clock, budget=150.0)
    by = {c["name"]: c for c in rec["candidates"]}
    assert by["default"]["status"] == "tried" and by["default"]["seconds"] == pytest.approx(30.0)
    assert by["slowfit"]["status"].startswith("stopped: time budget after fold 1/3")
    assert by["slowfit"]["seconds"] == pytest.approx(100.0) and by["slowfit"]["predicted_s"] == pytest.approx(30.0)
    assert by["slowfit"]["automated_share"] is None  # incomplete out-of-fold scores: no figures
    # later looks like the default too, but slowfit's fold taught the prediction: x 10, clamped to x 4
    assert by["later"]["status"].startswith("skipped: time budget (needs about 120 s, 0 s left)")
    assert clock.fits == [10.0, 10.0, 10.0, 100.0]  # the two remaining slow folds never ran
    assert rec["chosen"] == "default" and "stopped in flight: slowfit" in rec["budget_note"]
    assert rec["final_estimate"]["total_s"] == pytest.approx(40.0, abs=0.05)
    assert rec["final_reserve_s"] == pytest.approx(50.0, abs=0.05)
    # the search ran past its own deadline (150 - 50 = 100 s) by less than the one fold in flight
    assert rec["search_seconds"] - (150.0 - rec["final_reserve_s"]) < 100.0


def test_candidates_that_cannot_finish_before_the_reserve_are_skipped(data: Path, tmp_path: Path,
                                                                      clock: Clock) -> None:
    rec = _select(data, tmp_path, clock, budget=100.0)  # 30 s search + 50 s reserve leaves 20 s < 30 s
    status = [c["status"] for c in rec["candidates"]]
    assert status[0] == "tried"  # the first candidate always runs
    assert status[1:] == ["skipped: time budget (needs about 30 s, 20 s left)"] * 2
    assert clock.fits == [10.0, 10.0, 10.0] and rec["search_seconds"] == pytest.approx(30.0)


def test_the_whole_call_keeps_the_budget_and_records_its_seconds(data: Path, tmp_path: Path, clock: Clock,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "bundle"
    with caplog.at_level(logging.WARNING):
        train_auto(data, out, BASE, AutoConfig(folds=3, time_budget_s=150.0, latency_budget_ms=1e4),
                   progress=lambda _: None, candidates=CANDS, clock=clock)
    m = load_bundle(out).manifest
    auto = m.calibration["auto"]
    assert [c["status"][:7] for c in auto["candidates"]] == ["tried", "stopped", "skipped"]
    assert auto["chosen"] == "default" and auto["budget_s"] == 150.0
    assert auto["final_training_s"] == pytest.approx(10.0)  # the one final fit on the injected clock
    total = auto["search_seconds"] + auto["final_training_s"]
    assert total == pytest.approx(140.0) and total <= 150.0
    assert clock.fits == [10.0, 10.0, 10.0, 100.0, 10.0]
    # the classifier's selection got what the search left (nothing: its default candidate only)
    assert auto["classifier_select_budget_s"] == 1.0
    assert m.provenance["training"]["classifier"]["select_time_budget_s"] == 1.0
    # and so did the fine-tuning candidate, whose budget counts the frozen candidates' time too
    assert auto["classifier_finetune_budget_s"] == 1.0
    assert m.provenance["training"]["classifier"]["finetune_candidate_budget_s"] == 1.0
    assert not [r for r in caplog.records if "over its" in r.getMessage()]
    report = (out / "report" / "report.md").read_text()
    assert "- time: scan and search 130 s + final training 10 s before this report, of the 150 s budget" in report
    # the report's candidate table says why a candidate has no figures
    rows = [line for line in report.splitlines() if line.startswith(("| slowfit ", "| later "))]
    assert len(rows) == 2 and "stopped: time budget" in rows[0] and "skipped: time budget" in rows[1]
    assert "skipped: time budget" in (out / "report" / "report.html").read_text()


def test_a_first_candidate_longer_than_the_budget_still_runs_and_the_overrun_is_a_warning(
        data: Path, tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "bundle"
    with caplog.at_level(logging.WARNING):
        train_auto(data, out, BASE, AutoConfig(folds=3, time_budget_s=20.0, latency_budget_ms=1e4),
                   progress=lambda _: None, candidates=CANDS[:2], clock=clock)
    auto = load_bundle(out).manifest.calibration["auto"]
    assert [c["status"][:7] for c in auto["candidates"]] == ["tried", "skipped"]
    warnings = [r.getMessage() for r in caplog.records if "over its" in r.getMessage()]
    assert len(warnings) == 1 and "20 s over its 20 s time budget" in warnings[0]
    assert "candidate default 30 s" in warnings[0] and "final training 10 s" in warnings[0]
