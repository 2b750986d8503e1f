"""Calibration maths against cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lineguard.errors import CalibrationError
from lineguard_models.binomial import clopper_pearson_lower, clopper_pearson_upper, extra_needed
from lineguard_models.calibration import (
    CalibrationPolicy,
    auroc,
    calibrate,
    roc_curve,
)


def test_clopper_pearson_zero_events_closed_form() -> None:
    # with 0 events the one-sided bound solves (1 - p)^n = alpha
    assert clopper_pearson_upper(0, 20, 0.95) == pytest.approx(1 - 0.05 ** (1 / 20), abs=1e-12)
    assert clopper_pearson_upper(0, 20, 0.95) == pytest.approx(0.1391, abs=1e-4)
    assert clopper_pearson_upper(0, 59, 0.95) == pytest.approx(1 - 0.05 ** (1 / 59), abs=1e-12)
    assert clopper_pearson_lower(0, 20, 0.95) == 0.0
    assert clopper_pearson_upper(20, 20, 0.95) == 1.0
    # all events: the lower bound solves p^n = alpha
    assert clopper_pearson_lower(20, 20, 0.95) == pytest.approx(0.05 ** (1 / 20), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(1, 10), (3, 25), (7, 40)])
def test_clopper_pearson_matches_the_binomial_tail(k: int, n: int) -> None:
    # definition: the upper bound p_u satisfies P(X <= k | p_u) = 1 - confidence
    pu = clopper_pearson_upper(k, n, 0.95)
    assert stats.binom.cdf(k, n, pu) == pytest.approx(0.05, abs=1e-9)
    pl = clopper_pearson_lower(k, n, 0.95)
    assert stats.binom.sf(k - 1, n, pl) == pytest.approx(0.05, abs=1e-9)
    assert pl < k / n < pu
    if (k, n) == (1, 10):
        assert pu == pytest.approx(0.3942, abs=1e-4)  # textbook value


def test_extra_images_needed_for_the_target() -> None:
    # 0/20 escapes, 5 % target at 95 %: need n with 0.05^(1/n) >= 0.95, i.e. n >= 58.4 -> 59 in all
    assert extra_needed(0, 20, 0.05, 0.95) == 39
    assert clopper_pearson_upper(0, 59, 0.95) <= 0.05 < clopper_pearson_upper(0, 58, 0.95)
    assert extra_needed(0, 100, 0.05, 0.95) == 0
    m = extra_needed(2, 20, 0.05, 0.95)
    assert m is not None
    assert clopper_pearson_upper(2, 20 + m, 0.95) <= 0.05 < clopper_pearson_upper(2, 19 + m, 0.95)
    assert extra_needed(0, 20, 0.0, 0.95) is None


def test_auroc_known_values() -> None:
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    assert auroc([1, 2, 3], [2.5, 3.5]) == pytest.approx(5 / 6)
    assert auroc([1, 2], [2, 3]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)  # a tie counts half
    rng = np.random.default_rng(0)
    g, d = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    # binormal with unit variances: AUROC = Phi(delta / sqrt(2))
    assert auroc(g, d) == pytest.approx(stats.norm.cdf(1 / math.sqrt(2)), abs=0.04)


def test_roc_curve_endpoints_and_area() -> None:
    g, d = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.9, 0.5, 0.3])
    fpr, tpr = roc_curve(g, d)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(g, d))


def test_separable_classes_give_a_band_over_the_gap() -> None:
    good = np.linspace(0.0, 1.0, 100)
    defects = {"scratch": np.linspace(2.0, 3.0, 20), "pit": np.linspace(1.5, 2.5, 20)}
    res = calibrate(good, defects, CalibrationPolicy(false_reject_budget=0.0, escape_target=0.0, band="recheck"))
    assert res.mode == "defects"
    assert res.lower == pytest.approx(1.0) and res.lower > 1.0  # just above the highest good
    assert res.upper == 1.5  # the lowest defect score is rejected
    assert res.good.false_rejects == 0 and res.good.rechecks == 0
    by = {c.name: c for c in res.classes}
    assert by["pit"].escapes == 0 and by["pit"].rejects == 20 and by["pit"].auroc == 1.0
    assert by["pit"].escape_upper == pytest.approx(1 - 0.05 ** (1 / 20))
    assert by["pit"].extra_needed is None  # a zero target cannot be proven
    assert res.good.false_reject_upper == pytest.approx(1 - 0.05 ** (1 / 100))


def test_overlapping_classes_meet_both_constraints_on_calibration_data() -> None:
    rng = np.random.default_rng(1)
    good, defect = rng.normal(0, 1, 200), rng.normal(2.5, 1, 40)
    pol = CalibrationPolicy(false_reject_budget=0.02, escape_target=0.05)
    res = calibrate(good, {"crack": defect}, pol)
    assert res.lower < res.upper
    assert np.count_nonzero(good >= res.upper) <= math.floor(0.02 * 200)
    assert np.count_nonzero(defect < res.lower) <= math.floor(0.05 * 40)
    c = res.classes[0]
    assert c.escapes + c.rechecks + c.rejects == 40
    assert res.good.rechecks == np.count_nonzero((good >= res.lower) & (good < res.upper)) > 0
    # one threshold instead of a band: escapes protected, false-reject budget may be exceeded
    single = calibrate(good, {"crack": defect}, pol.model_copy(update={"band": "none"}))
    assert single.lower == single.upper == res.lower


def test_good_only_is_flagged_loudly() -> None:
    res = calibrate(np.arange(50, dtype=float), {}, CalibrationPolicy(false_reject_budget=0.0))
    assert res.mode == "good_only" and res.lower == res.upper and res.upper > 49
    assert any("NO DEFECT IMAGES" in w for w in res.warnings)
    assert res.thresholds()["policy"]["mode"] == "good_only"
    assert res.summary()["t_escape"] is None


def test_small_and_empty_classes_warn() -> None:
    res = calibrate(np.arange(30.0), {"pit": [40.0] * 5, "dent": []})
    text = " ".join(res.warnings)
    assert "'pit' has only 5 images" in text and "'dent' has no images" in text
    assert [c.name for c in res.classes] == ["pit"]


def test_refusals() -> None:
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        calibrate([0.1, float("nan"), 0.3, 0.2, 0.1], {})
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        calibrate(np.arange(10.0), {"pit": [1.0, float("inf")]})
    with pytest.raises(CalibrationError, match="only 3 held-out good"):
        calibrate([0.1, 0.2, 0.3], {"pit": [1.0] * 20})
