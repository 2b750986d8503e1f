"""Decision stage: thresholds, classes, unknown defects, fail-safe, uncertainty routing (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineguard.bundle import Manifest
from lineguard.contracts import EngineOutput, Frame, Verdict
from lineguard.decision import (
    UNKNOWN_CLASS,
    DecisionPolicy,
    class_guess_of,
    decide,
    failsafe_decision,
    failsafe_reason,
    is_uncertain,
    verdict_for_score,
)
from lineguard.errors import EngineError, ImageError

POLICY = DecisionPolicy(
    bundle_id="b-7", lower=0.3, upper=0.6, classes=("scratch", "dent"),
    min_confidence={"scratch": 0.7, "dent": 0.5},
)
FRAME = Frame(seq=11, part_id=4242, t_capture_ns=1_000_000, image=np.zeros((4, 4), np.uint8), camera_id="cam0")


def _out(score: float, probs: list[float] | None = None) -> EngineOutput:
    p = None if probs is None else np.asarray(probs, np.float32)
    return EngineOutput(anomaly_score=score, class_probs=p, timings_ms={"inference": 1.5})


@pytest.mark.parametrize(
    ("score", "verdict"),
    [(0.0, Verdict.ACCEPT), (0.2999, Verdict.ACCEPT), (0.3, Verdict.RECHECK), (0.5999, Verdict.RECHECK),
     (0.6, Verdict.REJECT), (17.0, Verdict.REJECT), (-1.0, Verdict.ACCEPT)],
)
def test_verdict_boundaries_accept_below_lower_reject_at_upper(score: float, verdict: Verdict) -> None:
    assert verdict_for_score(score, 0.3, 0.6) is verdict


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_is_never_a_verdict(score: float) -> None:
    with pytest.raises(ValueError, match="not a finite"):
        verdict_for_score(score, 0.3, 0.6)
    d = decide(_out(score), FRAME, POLICY, t_decided_ns=2_000_000)
    assert d.verdict is Verdict.FAILSAFE and d.failsafe and d.reasons[0] == "engine_error"


def test_accept_carries_ids_reasons_and_no_class() -> None:
    d = decide(_out(0.1, [0.9, 0.1]), FRAME, POLICY, t_decided_ns=3_500_000)
    assert d.verdict is Verdict.ACCEPT and not d.failsafe
    assert (d.seq, d.part_id, d.camera_id, d.bundle_id) == (11, 4242, "cam0", "b-7")
    assert d.defect_class == "" and math.isnan(d.class_confidence)
    assert d.reasons[0] == "below_lower"
    assert d.latency_ms == pytest.approx(2.5)
    assert d.timings_ms == {"inference": 1.5}


def test_reject_names_the_confident_class() -> None:
    d = decide(_out(0.9, [0.2, 0.8]), FRAME, POLICY, t_decided_ns=2)
    assert d.verdict is Verdict.REJECT
    assert d.defect_class == "dent" and d.class_confidence == pytest.approx(0.8)
    assert d.reasons[0] == "at_or_above_upper"
    assert not is_uncertain(d)


def test_low_confidence_is_unknown_but_still_rejected_and_marked_for_labelling() -> None:
    # scratch wins with 0.65 but needs 0.7
    d = decide(_out(0.9, [0.65, 0.35]), FRAME, POLICY, t_decided_ns=2)
    assert d.verdict is Verdict.REJECT
    assert d.defect_class == UNKNOWN_CLASS and d.class_confidence == pytest.approx(0.65)
    assert d.reasons[0] == "unknown_defect" and "scratch" in d.reasons[1]
    assert is_uncertain(d)


def test_per_class_threshold_is_used_not_a_global_one() -> None:
    # dent 0.55 passes dent's 0.5 floor although it would fail scratch's 0.7
    d = decide(_out(0.9, [0.45, 0.55]), FRAME, POLICY, t_decided_ns=2)
    assert d.defect_class == "dent"


def test_recheck_gets_a_class_and_is_uncertain() -> None:
    d = decide(_out(0.45, [0.95, 0.05]), FRAME, POLICY, t_decided_ns=2)
    assert d.verdict is Verdict.RECHECK and d.defect_class == "scratch"
    assert d.reasons[0] == "in_uncertainty_band"
    assert is_uncertain(d)


@pytest.mark.parametrize("probs", [None, [0.5], [float("nan"), 0.5]])
def test_missing_or_broken_probs_give_unknown_not_a_guess(probs: list[float] | None) -> None:
    d = decide(_out(0.9, probs), FRAME, POLICY, t_decided_ns=2)
    assert d.verdict is Verdict.REJECT and d.defect_class == UNKNOWN_CLASS
    assert d.reasons[0] == "unknown_defect"


def test_no_classifier_means_no_class() -> None:
    policy = DecisionPolicy(bundle_id="b", lower=0.3, upper=0.6)
    d = decide(_out(0.9, None), FRAME, policy, t_decided_ns=2)
    assert d.verdict is Verdict.REJECT and d.defect_class == ""
    assert not is_uncertain(d)


def test_equal_thresholds_leave_no_recheck_band() -> None:
    policy = DecisionPolicy(bundle_id="b", lower=0.5, upper=0.5)
    assert decide(_out(0.4999), FRAME, policy, t_decided_ns=2).verdict is Verdict.ACCEPT
    assert decide(_out(0.5), FRAME, policy, t_decided_ns=2).verdict is Verdict.REJECT


def test_policy_refuses_bad_thresholds_and_missing_class_floors() -> None:
    with pytest.raises(ValueError):
        DecisionPolicy(bundle_id="b", lower=0.7, upper=0.6)
    with pytest.raises(ValueError):
        DecisionPolicy(bundle_id="b", lower=float("nan"), upper=0.6)
    with pytest.raises(ValueError, match="min_confidence"):
        DecisionPolicy(bundle_id="b", lower=0.1, upper=0.6, classes=("a",), min_confidence={})


def test_decide_accepts_the_manifest_itself() -> None:
    manifest = Manifest.model_validate({
        "schema_version": 1, "bundle_id": "m-1", "product": "p", "created_utc": "2026-01-01T00:00:00Z",
        "input": {"channels": 1, "dtype": "uint8", "max_value": 255, "input_width": 32, "input_height": 32},
        "engines": {"anomaly": {"file": "a.onnx", "outputs": {"score": "s"}},
                    "classifier": {"file": "c.onnx", "outputs": {"probs": "p"}}},
        "thresholds": {"lower": 1.0, "upper": 2.0},
        "classifier": {"classes": ["crack"], "min_confidence": {"crack": 0.9}},
        "files": {"a.onnx": "0" * 64, "c.onnx": "1" * 64},
    })
    d = decide(_out(2.5, [0.8]), FRAME, manifest, t_decided_ns=2)
    assert d.bundle_id == "m-1" and d.verdict is Verdict.REJECT and d.defect_class == UNKNOWN_CLASS
    assert DecisionPolicy.from_manifest(manifest).min_confidence == {"crack": 0.9}


def test_failsafe_decision_is_flagged_and_keeps_the_reason() -> None:
    d = failsafe_decision(FRAME, "b-7", "deadline", "no verdict within 200 ms", t_decided_ns=9)
    assert d.verdict is Verdict.FAILSAFE and d.verdict.value == 4 and d.failsafe
    assert d.reasons == ("deadline", "no verdict within 200 ms")
    assert math.isnan(d.anomaly_score) and d.part_id == 4242 and d.t_decided_ns == 9
    assert is_uncertain(d)
    assert failsafe_decision(FRAME, "b-7", "queue_full").t_decided_ns > 0


def test_failsafe_reason_must_be_a_label_token() -> None:
    with pytest.raises(ValueError):
        failsafe_decision(FRAME, "b", "Engine Error!")


def test_failsafe_reason_from_exceptions() -> None:
    assert failsafe_reason(ImageError("bad")) == "corrupt_frame"
    assert failsafe_reason(EngineError("boom")) == "engine_error"
    assert failsafe_reason(RuntimeError("?")) == "engine_error"


def test_recheck_with_low_confidence_keeps_the_best_guess_and_its_confidence() -> None:
    # issue 16: the anomaly stage only sends this part to recheck and the classifier is unsure (scratch
    # 0.65 < 0.7): the class is unknown, but the person rechecking still sees the guess and p
    d = decide(_out(0.45, [0.65, 0.35]), FRAME, POLICY, t_decided_ns=2)
    assert d.verdict is Verdict.RECHECK and d.defect_class == UNKNOWN_CLASS
    assert d.class_guess == "scratch" and d.class_confidence == pytest.approx(0.65)
    assert "class_guess=scratch" in d.reasons  # what the sink header carries (wire format v1)
    assert class_guess_of(d.reasons, d.defect_class) == "scratch"


def test_confident_recheck_guess_is_the_class_and_accept_has_none() -> None:
    d = decide(_out(0.45, [0.1, 0.9]), FRAME, POLICY, t_decided_ns=2)
    assert (d.defect_class, d.class_guess) == ("dent", "dent")
    assert class_guess_of(list(d.reasons), d.defect_class) == "dent"
    a = decide(_out(0.1, [0.1, 0.9]), FRAME, POLICY, t_decided_ns=2)
    assert a.verdict is Verdict.ACCEPT and a.class_guess == "" and math.isnan(a.class_confidence)


def test_invalid_probs_have_no_guess() -> None:
    d = decide(_out(0.45, [float("nan"), 0.5]), FRAME, POLICY, t_decided_ns=2)
    assert d.defect_class == UNKNOWN_CLASS and d.class_guess == ""
