"""The publisher's near_reject rule and its budget (pure: no sockets)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from lineguard.contracts import Decision, Verdict
from lineguard.decision import band_width
from lineguard.publisher import PublisherConfig, TokenBucket, classify, is_near_reject
from lineguard.wire import MessageKind

BAND = {"lower": 2.0, "upper": 4.0}  # band width 2.0


def decision(score: float, verdict: Verdict = Verdict.REJECT, defect_class: str = "") -> Decision:
    return Decision(seq=1, part_id=1, verdict=verdict, anomaly_score=score, bundle_id="b", camera_id="c",
                    t_capture_ns=0, t_decided_ns=1, defect_class=defect_class)


@pytest.mark.parametrize(("score", "margin", "expected"), [
    (4.0, 0.5, MessageKind.NEAR_REJECT),   # at the reject threshold
    (4.9, 0.5, MessageKind.NEAR_REJECT),   # 0.45 band widths above it
    (5.0, 0.5, None),                      # exactly at the margin: outside (half-open)
    (5.1, 0.5, None),
    (5.9, 1.0, MessageKind.NEAR_REJECT),   # a wider margin takes it
    (4.1, 0.0, None),                      # margin 0 switches the kind off
])
def test_reject_within_the_margin_above_upper_is_near_reject(score: float, margin: float,
                                                            expected: MessageKind | None) -> None:
    assert classify(decision(score), BAND, margin) is expected


def test_the_other_kinds_keep_their_precedence() -> None:
    assert classify(decision(4.1, Verdict.RECHECK), BAND, 0.5) is MessageKind.UNCERTAIN
    assert classify(decision(4.1, Verdict.FAILSAFE), BAND, 0.5) is MessageKind.UNCERTAIN
    # an unknown defect class is the actionable label: it wins over nearness
    assert classify(decision(4.1, defect_class="unknown"), BAND, 0.5) is MessageKind.UNKNOWN_DEFECT
    assert classify(decision(1.0, Verdict.ACCEPT), BAND, 0.5) is None
    assert classify(decision(4.1, defect_class="scratch"), BAND, 0.5) is MessageKind.NEAR_REJECT


def test_without_thresholds_or_score_nothing_is_near() -> None:
    assert classify(decision(4.1)) is None  # the old signature: no near_reject
    assert not is_near_reject(decision(4.1), None, 0.5)
    assert not is_near_reject(decision(4.1), {"upper": 4.0}, 0.5)
    assert not is_near_reject(decision(math.nan), BAND, 0.5)
    assert not is_near_reject(decision(4.1), {"lower": 2.0, "upper": math.inf}, 0.5)


def test_without_a_band_the_margin_is_relative_to_the_threshold() -> None:
    single = {"lower": 10.0, "upper": 10.0}
    assert band_width(10.0, 10.0) == pytest.approx(1.0)  # 10 % of the threshold
    assert classify(decision(10.4), single, 0.5) is MessageKind.NEAR_REJECT
    assert classify(decision(10.6), single, 0.5) is None


def test_a_collapsed_band_keeps_a_margin_relative_to_the_threshold() -> None:
    collapsed = {"lower": 43.10, "upper": 43.16}  # a real first-teach band on casting
    assert classify(decision(43.5), collapsed, 0.5) is None  # 0.5 band widths = 0.03 score units
    assert classify(decision(43.5), collapsed, 0.5, 0.02) is MessageKind.NEAR_REJECT  # 2 % of 43.16 = 0.86
    assert classify(decision(44.1), collapsed, 0.5, 0.02) is None
    # with a normal band the floor changes nothing
    assert classify(decision(5.1), BAND, 0.5, 0.02) is None


def test_token_bucket_allows_the_budget_then_refills_with_time() -> None:
    now = [100.0]
    bucket = TokenBucket(per_min=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 20.0  # one token per 20 s at 3 per minute
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 3600.0  # refills to the burst size, not beyond
    assert sum(bucket.take() for _ in range(10)) == 3


def test_config_bounds() -> None:
    assert PublisherConfig().near_reject_margin_bands > 0  # on by default
    with pytest.raises(ValidationError):
        PublisherConfig(near_reject_margin_bands=-0.1)
    with pytest.raises(ValidationError):
        PublisherConfig(near_reject_margin_bands=11.0)
    with pytest.raises(ValidationError):
        PublisherConfig(near_reject_per_min=0)
