"""Operating point: the thresholds that decide the most calibration parts within the targets' bounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lineguard_models.binomial import clopper_pearson_upper, extra_needed
from lineguard_models.calibration import (
    CalibrationPolicy,
    allowed_errors,
    calibrate,
    false_reject_threshold,
    tail_escape_threshold,
    tail_reject_threshold,
)
from lineguard_models.report import write_report


def _bound(k: int, n: int) -> float:
    return 1.0 if k >= n else float(stats.beta.ppf(0.95, k + 1, n - k))


def test_allowed_errors_follow_the_bound_and_fall_back_when_unsupported() -> None:
    # 1000 goods at a 1 % budget: the observed rule would allow 10, the bound allows only 4
    k, ok = allowed_errors(1000, 0.01, 0.95)
    assert ok and k == 4
    assert _bound(4, 1000) <= 0.01 < _bound(5, 1000)
    assert allowed_errors(1000, 0.01, 0.95, "observed") == (10, True)
    # 20 defects at 2 %: even 0/20 gives a 13.9 % bound -> observed rule (0 allowed), flagged
    assert allowed_errors(20, 0.02, 0.95) == (0, False)
    assert allowed_errors(300, 0.02, 0.95) == (1, True)  # 1/300 -> 1.57 %, 2/300 -> 2.09 %


def _brute_force_share(good: np.ndarray, defect: np.ndarray, esc_target: float, fr_budget: float) -> float:
    """Best automated share over every (lower, upper) pair of observed scores whose bounds meet the targets."""
    every = np.concatenate([good, defect])
    cands = np.unique(np.concatenate([every, [every.max() + 1.0]]))
    esc_ok = np.array([_bound(int(np.sum(defect < t)), defect.size) <= esc_target for t in cands])
    fr_ok = np.array([_bound(int(np.sum(good >= t)), good.size) <= fr_budget for t in cands])
    below = np.array([np.sum(every < t) for t in cands])  # accepted when t is the lower threshold
    above = np.array([np.sum(every >= t) for t in cands])  # rejected when t is the upper threshold
    share = (below[:, None] + above[None, :]) / every.size  # [lower, upper]
    ok = esc_ok[:, None] & fr_ok[None, :] & (cands[:, None] <= cands[None, :])
    return float(share[ok].max())


def test_overlap_planted_scores_pick_the_largest_share_within_the_bounds() -> None:
    good = np.linspace(0.0, 1.0, 300)  # 0/300 false rejects -> bound 0.995 % <= 1 %: supported
    defect = np.linspace(0.9, 3.0, 300)  # overlap with the goods on [0.9, 1.0]
    res = calibrate(good, {"crack": defect}, CalibrationPolicy())
    c = res.classes[0]
    assert (res.good.allowed, res.good.supported) == (0, True)
    assert (c.allowed, c.supported) == (1, True)
    assert res.lower == defect[1]  # one escape allowed: the second-lowest defect score
    assert res.upper == np.nextafter(1.0, np.inf)  # no false reject allowed: just above the top good
    assert c.escapes == 1 and res.good.false_rejects == 0
    assert c.escape_upper <= 0.02 and res.good.false_reject_upper <= 0.01
    every = np.concatenate([good, defect])
    expected = float(np.mean((every < res.lower) | (every >= res.upper)))
    assert res.automated_share == pytest.approx(expected)
    assert res.automated_share == pytest.approx(_brute_force_share(good, defect, 0.02, 0.01))
    assert 0.9 < res.automated_share < 1.0


def test_random_overlaps_match_the_brute_force_optimum() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        good, defect = rng.normal(0, 1, 160), rng.normal(3.0, 1, 160)
        pol = CalibrationPolicy(escape_target=0.05, false_reject_budget=0.05)
        res = calibrate(good, {"d": defect}, pol)
        assert res.automated_share == pytest.approx(_brute_force_share(good, defect, 0.05, 0.05))


def test_separated_classes_are_decided_by_one_threshold_in_the_gap() -> None:
    good = np.linspace(0.0, 1.0, 60)
    defects = {"scratch": np.linspace(3.0, 4.0, 20), "pit": np.linspace(2.0, 5.0, 20)}
    res = calibrate(good, defects)
    assert res.lower == res.upper and 1.0 < res.lower < 2.0
    assert res.automated_share == 1.0 and res.good.rechecks == 0
    # 60 goods packed 0.017 apart against a defect class spread over 3.0: the unseen defect tail is the
    # heavier one, so the threshold sits nearer the goods than the middle of the gap
    assert res.lower < 1.5
    # mirrored: few widely spread goods against many tightly packed defects -> nearer the defects
    mirrored = calibrate(np.linspace(-2.0, 1.0, 12), {"scratch": np.linspace(2.0, 2.3, 200)})
    assert mirrored.lower == mirrored.upper and 1.5 < mirrored.lower < 2.0
    # symmetric tails and equal weights (budget = target): the middle
    sym = calibrate(np.linspace(0.0, 1.0, 60), {"s": np.linspace(2.0, 3.0, 60)},
                    CalibrationPolicy(escape_target=0.02, false_reject_budget=0.02))
    assert sym.lower == pytest.approx(1.5, abs=0.01)
    # the old behaviour stays available: the whole gap is a band
    band = calibrate(good, defects, CalibrationPolicy(band="recheck", escape_tail="observed"))
    assert band.lower == pytest.approx(1.0) and band.upper == 2.0 and band.automated_share == 1.0
    # with the modelled tail the band ends where pit's tail puts 2 % of new pits, below its lowest score
    modelled = calibrate(good, defects, CalibrationPolicy(band="recheck"))
    assert modelled.upper == pytest.approx(tail_escape_threshold(defects["pit"], 0.02)) and 1.0 < modelled.upper < 2.0


def test_escape_first_puts_the_threshold_where_the_good_tail_meets_the_budget() -> None:
    good = np.linspace(0.0, 1.0, 60)
    defects = {"scratch": np.linspace(3.0, 4.0, 20)}
    balanced = calibrate(good, defects)
    first = calibrate(good, defects, CalibrationPolicy(gap="escape_first"))
    # the good tail: k = 10 highest of 60, u = the 11th highest, s = their mean excess over it
    top = np.sort(good)[::-1]
    u, s = top[10], float(np.mean(top[:10] - top[10]))
    expected = u + s * np.log((10 / 61) / 0.01)  # modelled false rejects = the 1 % budget
    assert first.lower == first.upper and first.lower == pytest.approx(expected, abs=3.0 / 512)
    assert 1.0 < first.lower < balanced.lower  # nearer the goods than the balanced point, still above them
    assert first.automated_share == 1.0
    # a budget the good tail cannot meet inside the gap: the balanced point
    wide = calibrate(np.linspace(-20.0, 1.0, 8), defects, CalibrationPolicy(gap="escape_first",
                                                                          false_reject_budget=0.001))
    assert wide.lower == pytest.approx(calibrate(np.linspace(-20.0, 1.0, 8), defects,
                                                 CalibrationPolicy(false_reject_budget=0.001)).lower)


def test_the_accept_threshold_follows_the_modelled_defect_tail_below_few_calibration_defects() -> None:
    good = np.linspace(0.0, 5.0, 60)  # far below the defects: the classes separate, only the tail decides
    # 20 defects whose lowest five spread downwards: the model reaches below the lowest one
    defect = np.array([8.0, 8.3, 8.7, 8.9, 9.0, *np.linspace(9.1, 10.0, 15)])
    u, s = 9.1, float(np.mean(9.1 - defect[:5]))  # k = 20 // 4 lowest below the next one
    expected = u - s * np.log((5 / 21) / 0.02)
    assert tail_escape_threshold(defect, 0.02) == pytest.approx(expected) and expected < defect[0]
    res = calibrate(good, {"crack": defect}, CalibrationPolicy(band="recheck"))
    assert res.t_escape == pytest.approx(expected) and res.upper == pytest.approx(expected)
    observed = calibrate(good, {"crack": defect}, CalibrationPolicy(band="recheck", escape_tail="observed"))
    assert observed.t_escape == defect[0]
    # many images: the tail's start is rarer than the target and the calibration scores decide alone
    many = np.sort(10.0 - np.random.default_rng(1).exponential(1.0, 2000))
    assert tail_escape_threshold(many, 0.02) == many[10]


def test_the_modelled_tail_lets_fewer_new_defects_through_than_the_lowest_calibration_score() -> None:
    # 400 calibrations of 20 defects each from a class with an exponential lower tail (P(score < t) =
    # exp(t - 10)): the true escape rate of each accept threshold, modelled rule against observed rule
    rng = np.random.default_rng(0)
    modelled, lowest = [], []
    for _ in range(400):
        d = np.sort(10.0 - rng.exponential(1.0, 20))
        t = calibrate(np.linspace(0.0, 2.0, 60), {"c": d}, CalibrationPolicy(band="recheck")).t_escape
        assert t is not None
        modelled.append(math.exp(t - 10.0))
        lowest.append(math.exp(d[0] - 10.0))
    assert np.mean(lowest) > 0.04  # the lowest of 20 sits near the 1/21 point, twice the 2 % target
    assert np.mean(modelled) < 0.04 and np.mean(modelled) < 0.8 * np.mean(lowest)
    # the 95 % bound of 0/20 (13.9 %) is exceeded less often
    assert np.mean(np.array(modelled) > 0.139) < np.mean(np.array(lowest) > 0.139)


def test_too_few_images_are_named_with_the_images_that_would_support_the_target() -> None:
    good = np.linspace(0.0, 1.0, 50)
    res = calibrate(good, {"pit": np.linspace(2.0, 3.0, 20)})
    assert not res.good.supported and not res.classes[0].supported
    # 0/20 -> bound 13.9 %: n >= ln(0.05)/ln(0.98) = 148.3 -> 149 images, i.e. 129 more
    assert res.classes[0].extra_needed == 129 == extra_needed(0, 20, 0.02, 0.95)
    assert clopper_pearson_upper(0, 149, 0.95) <= 0.02 < clopper_pearson_upper(0, 148, 0.95)
    assert res.good.extra_needed == 249  # 0/299 -> 0.997 % <= 1 %
    text = " ".join(res.warnings)
    assert "too few images to support the targets" in text and "+129" in text and "+249" in text
    # enough images: no such warning
    big = calibrate(np.linspace(0.0, 1.0, 400), {"pit": np.linspace(2.0, 3.0, 200)})
    assert not any("too few images" in w for w in big.warnings)


def test_curve_contains_the_chosen_point_and_trades_share_for_escapes() -> None:
    rng = np.random.default_rng(5)
    good, defect = rng.normal(0, 1, 400), rng.normal(2.5, 1, 200)
    res = calibrate(good, {"a": defect, "b": defect + 0.5})
    curve = res.curve
    assert curve is not None and curve["chosen"] == {"lower": res.lower, "upper": res.upper}
    esc, fr = curve["escape"], curve["false_reject"]
    i = esc["threshold"].index(res.lower)
    assert esc["share"][i] == pytest.approx(res.automated_share)
    assert esc["bound"][i] == pytest.approx(max(c.escape_upper for c in res.classes))
    j = fr["threshold"].index(res.upper)
    assert fr["share"][j] == pytest.approx(res.automated_share)
    assert fr["bound"][j] == pytest.approx(res.good.false_reject_upper)
    # raising the accept threshold can only raise escapes; the bound is never below the rate
    assert all(np.diff(esc["rate"]) >= 0) and all(b >= r for b, r in zip(esc["bound"], esc["rate"], strict=True))
    assert all(np.diff(fr["rate"]) <= 0)
    assert len(esc["threshold"]) <= 162


def test_observed_mode_keeps_the_floor_rule() -> None:
    good = np.linspace(0.0, 1.0, 1000)
    res = calibrate(good, {}, CalibrationPolicy(targets_on="observed"))
    assert res.good.false_rejects == math.floor(0.01 * 1000)
    res_b = calibrate(good, {})
    assert res_b.good.false_rejects == 4 and res_b.good.false_reject_upper <= 0.01


def test_report_writes_the_curve_plots_and_its_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    good, defect = rng.normal(0, 1, 80), rng.normal(3, 1, 30)
    res = calibrate(good, {"dent": defect})
    auto = {"chosen": "a", "reason": "largest share", "criterion": "c", "budget_note": "n",
            "candidates": [{"name": "a", "settings": "224 px", "automated_share": 0.9, "auroc": 0.99,
                            "tail": 1.2, "engine_p50_ms": 12.0, "seconds": 3.0, "note": ""}]}
    md = write_report(tmp_path, res, good, {"dent": defect}, context={"x": 1}, auto=auto)
    assert (tmp_path / "operating_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "operating_curve.svg").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["curve"]["escape"]["share"] == res.curve["escape"]["share"]  # type: ignore[index]
    assert data["calibration"]["automated_share"] == res.automated_share
    assert data["auto"]["candidates"][0]["name"] == "a"
    text = md.read_text()
    assert "operating_curve.png" in text and "Automatic configuration" in text and "| a | 224 px |" in text


def _goods_with_an_outlier() -> np.ndarray:
    # 59 good scores and one atypical good far above the rest (the suite's metal plate: 53.8 vs 47.0)
    return np.concatenate([np.random.default_rng(3).normal(30.0, 3.0, 59), [60.0]])


def test_the_reject_threshold_follows_the_modelled_good_tail_below_one_outlier() -> None:
    good = _goods_with_an_outlier()
    top = np.sort(good)[::-1]
    u, s = top[10], float(np.mean(top[:10] - top[10]))  # k = 10 highest of 60 over the 11th
    modelled = u + s * np.log((10 / 61) / 0.01)
    assert top[1] < modelled < top[0]  # the outlier alone does not set it; the second highest stays below
    assert tail_reject_threshold(good, 0.01, 0) == pytest.approx(modelled)
    # the defects overlap the outlier: the band ends at the modelled point, not at the outlier
    defects = {"dent": np.linspace(45.0, 70.0, 20)}
    res = calibrate(good, defects)
    assert res.upper == pytest.approx(modelled) and res.good.false_rejects == 1
    assert any("modelled tail" in w and "60" in w for w in res.warnings)  # names the outlier's score to look at
    observed = calibrate(good, defects, CalibrationPolicy(reject_tail="observed"))
    assert observed.upper > top[0] and observed.good.false_rejects == 0
    assert not any("modelled tail" in w for w in observed.warnings)
    assert res.automated_share > observed.automated_share


def test_the_reject_tail_never_lets_more_than_one_more_good_through() -> None:
    # two goods far above the other 58: the modelled 1 % point lies below both; clamped just above the second
    good = np.concatenate([np.linspace(0.0, 10.0, 58), [29.0, 30.0]])
    top = np.sort(good)[::-1]
    u, s = top[10], float(np.mean(top[:10] - top[10]))
    assert u + s * np.log((10 / 61) / 0.01) < top[1]
    t = tail_reject_threshold(good, 0.01, 0)
    assert t == np.nextafter(29.0, np.inf) and int(np.count_nonzero(good >= t)) == 1


def test_the_reject_tail_is_not_used_where_the_goods_bound_the_budget() -> None:
    # 1000 goods support the 1 % budget's bound (4 allowed): the calibration scores decide alone
    good = np.concatenate([np.random.default_rng(4).normal(30.0, 3.0, 999), [60.0]])
    res = calibrate(good, {"dent": np.linspace(45.0, 70.0, 20)})
    assert res.good.supported and res.t_false_reject == false_reject_threshold(good, 0.01, 4)


def test_the_reject_tail_warning_names_the_good_it_lets_through_not_the_highest() -> None:
    # 150 goods cannot bound 1 % (0/150 -> 2.0 %): the observed rule allows one (the 60), the modelled
    # tail lets the 50 through as well; the warning must point at the 50
    good = np.concatenate([np.random.default_rng(5).normal(30.0, 3.0, 148), [50.0, 60.0]])
    res = calibrate(good, {"dent": np.linspace(45.0, 70.0, 20)})
    assert not res.good.supported and res.good.allowed == 1 and res.good.false_rejects == 2
    assert any("score 50 scores above it" in w for w in res.warnings), res.warnings
