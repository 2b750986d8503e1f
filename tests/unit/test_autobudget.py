"""The time budget of automatic configuration (lineguard_models.autobudget) on known timings: one
deadline from the call's start, the final training priced from the first candidate's folds with a
superlinear cost model, a candidate stopped between folds when the rest cannot finish, the
classifier's selection given what is left, and the over-budget warning. An injected clock: no sleeping.
"""

from __future__ import annotations

import pytest

from lineguard_models.autobudget import (
    SAFETY,
    Deadline,
    FinalEstimate,
    FoldGuard,
    FoldTimes,
    Work,
    classifier_select_budget,
    correction,
    final_estimate,
    overrun_warning,
    predict_s,
)
from lineguard_models.autoconfig import Outcome, choose


class Clock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _times(fit: float = 10.0, coreset: float = 6.0, score: float = 2.0, scored: int = 10, fitted: int = 20,
           folds: int = 2) -> FoldTimes:
    return FoldTimes(fit_s=[fit] * folds, coreset_s=[coreset] * folds, score_s=[score] * folds,
                     scored=[scored] * folds, fitted=[fitted] * folds)


def test_the_deadline_runs_from_its_start_on_the_injected_clock() -> None:
    clock = Clock()
    d = Deadline(100.0, clock)
    clock.now += 30.0
    assert d.elapsed() == 30.0 and d.left() == 70.0 and d.left(reserve_s=80.0) == -10.0


def test_cost_grows_faster_than_pixels_and_with_the_bank_share() -> None:
    base = Work(patches=100.0, bank_share=0.1, pixels=100.0)
    double = Work(patches=200.0, bank_share=0.1, pixels=200.0)
    assert double.linear(base) == 2.0 and double.quadratic(base) == 4.0  # the coreset: patches x bank rows
    assert Work(patches=100.0, bank_share=0.3, pixels=100.0).quadratic(base) == pytest.approx(3.0)
    fixed = Work(patches=100.0, bank_share=1.0, pixels=100.0, fixed_rows=64.0)
    assert Work(patches=200.0, bank_share=1.0, pixels=200.0, fixed_rows=64.0).quadratic(fixed) == 2.0
    t = _times()  # a fold: 4 s features + export, 6 s coreset, 2 s scoring; 1 s engine timing
    assert predict_s(t, 1.0, 1.0, 2) == pytest.approx(t.total_s())  # the same recipe: what was measured
    assert predict_s(t, 2.0, 4.0, 2) == pytest.approx(2 * (4 * 2 + 6 * 4 + 2 * 8 ** 0.5))
    assert predict_s(t, 2.0, 4.0, 2) > 2 * t.total_s()  # faster than the pixels


def test_a_larger_backbone_counts_as_more_patches_but_not_more_classifier_pixels() -> None:
    from lineguard.preprocess import InputSpec
    from lineguard_models.autobudget import BACKBONE_COST, work_of
    from lineguard_models.pipeline import TrainConfig

    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=224, input_height=224)
    lite0 = work_of(TrainConfig(backbone="efficientnet_lite0"), spec)
    lite2 = work_of(TrainConfig(backbone="efficientnet_lite2"), spec)
    cost = BACKBONE_COST["efficientnet_lite2"]
    assert lite2.linear(lite0) == pytest.approx(cost) and cost > 1.3
    assert lite2.pixels == lite0.pixels == 224 * 224  # the classifier runs Lite0 either way


def test_the_final_training_is_priced_from_the_first_candidates_folds() -> None:
    t = _times(fit=10.0, coreset=6.0, score=2.0, scored=10, fitted=20)  # 0.2 s per image by a 20-image bank
    est = final_estimate(t, n_train=30, n_score=50, classifier_passes=0)
    grow = 30 / 20
    assert est.fit_s == pytest.approx(4.0 * grow + 6.0 * grow**2)  # the coreset grows with the square
    assert est.score_s == pytest.approx(0.2 * grow * 50)  # the larger bank scores every extra image
    assert est.classifier_s == 0.0 and est.report_s > 0.0
    with_clf = final_estimate(t, n_train=30, n_score=50, classifier_passes=200)
    assert with_clf.classifier_s > 200 * 0.2  # one backbone pass per labelled image and copy, plus fixed work
    assert with_clf.reserve_s() == pytest.approx(SAFETY * with_clf.total_s)
    bigger = final_estimate(t, n_train=30, n_score=50, classifier_passes=0, lin=2.0, quad=4.0)
    assert bigger.fit_s == pytest.approx(4.0 * grow * 2.0 + 6.0 * grow**2 * 4.0)
    fixed = final_estimate(t, n_train=30, n_score=50, classifier_passes=0, bank_grows=False)  # bank_size rows
    assert fixed.fit_s == pytest.approx(10.0 * grow) and fixed.score_s == pytest.approx(0.2 * 50)


def test_a_candidate_is_stopped_between_folds_when_the_rest_cannot_finish() -> None:
    clock = Clock(1000.0)
    guard = FoldGuard(deadline=1100.0, folds=3, predicted_fold_s=20.0, clock=clock)
    clock.now = 1040.0  # fold 1 took 40 s, twice the prediction: 2 more folds need 80 s, 60 s left
    times = FoldTimes(fit_s=[35.0], score_s=[5.0], scored=[4], fitted=[8])
    stop = guard.before_fold(1, times)
    assert stop is not None and stop.startswith("stopped: time budget after fold 1/3")
    assert "needs about 80 s, 60 s left" in stop
    clock.now = 1010.0  # 90 s left: the two folds fit
    assert guard.before_fold(1, times) is None


def test_later_predictions_learn_from_measured_candidates_within_bounds() -> None:
    assert correction([]) == 1.0
    assert correction([(30.0, 20.0), (10.0, 20.0)]) == pytest.approx(1.0)
    assert correction([(1000.0, 10.0)]) == 4.0 and correction([(1.0, 100.0)]) == 0.5


def test_the_classifier_selection_gets_what_is_left() -> None:
    rest = FinalEstimate(fit_s=40.0, score_s=10.0, classifier_s=0.0, report_s=10.0)
    assert classifier_select_budget(500.0, rest, 300.0) is None  # the configured 300 s fit
    assert classifier_select_budget(175.0, rest, 300.0) == pytest.approx(175.0 - SAFETY * 60.0)
    assert classifier_select_budget(10.0, rest, 300.0) == 1.0  # nothing left: its default candidate only


def test_the_overrun_warning_says_by_how_much_and_what_took_the_time() -> None:
    assert overrun_warning(239.0, 240.0, {"candidate default": 55.0}) is None
    text = overrun_warning(300.0, 240.0, {"candidate default": 55.0, "candidate 320px": 200.0,
                                          "final training": 45.0}) or ""
    assert "60 s over its 240 s time budget" in text and "candidate 320px 200 s" in text


def test_a_stopped_or_skipped_candidate_never_wins() -> None:
    tried = Outcome(name="default", settings="", why="", automated_share=0.5, auroc=0.9, engine_p50_ms=10.0)
    stopped = Outcome(name="big", settings="", why="", status="stopped: time budget after fold 1/3",
                      automated_share=1.0, auroc=1.0, engine_p50_ms=5.0)
    skipped = Outcome(name="huge", settings="", why="", status="skipped: time budget (needs about 9 s, 1 s left)",
                      automated_share=1.0, auroc=1.0, engine_p50_ms=5.0)
    assert choose([tried, stopped, skipped], 40.0)[0] is tried
