"""crossfit.fold_bias / rescaled: the out-of-fold goods' pessimism measured on goods held out of every bank."""

from __future__ import annotations

import pytest

from lineguard_models.crossfit import fold_bias, rescaled
from lineguard_models.ortscore import Scored


def _s(rel: str, score: float, label: str = "good") -> Scored:
    return Scored(rel=rel, sha256="", label=label, score=score)


def test_median_ratio_of_final_to_fold_scores_over_the_goods_scored_by_both() -> None:
    final = [_s(f"g{i}", 9.0 + i) for i in range(6)] + [_s("d0", 50.0, "pit"), _s("g9", 3.0)]
    fold = {f"g{i}": (9.0 + i) / r for i, r in enumerate((0.8, 0.9, 0.85, 0.95, 0.7, 0.88))} | {"d0": 10.0}
    bias = fold_bias(final, fold)
    assert bias["pairs"] == 6  # the defect and the good without a fold score do not count
    assert bias["median_ratio"] == pytest.approx((0.85 + 0.88) / 2, abs=1e-4) and bias["applied"]
    oof = [_s("a", 10.0), _s("b", 20.0)]
    assert [s.score for s in rescaled(oof, bias["factor"])] == pytest.approx([8.65, 17.3], abs=1e-3)


def test_never_scaled_up_never_more_than_halved_and_not_without_enough_pairs() -> None:
    final = [_s(f"g{i}", 10.0) for i in range(5)]
    assert fold_bias(final, {f"g{i}": 8.0 for i in range(5)})["factor"] == 1.0  # ratio 1.25: not applied
    assert fold_bias(final, {f"g{i}": 40.0 for i in range(5)})["factor"] == 0.5
    few = fold_bias(final[:4], {f"g{i}": 20.0 for i in range(4)})
    assert few["factor"] == 1.0 and not few["applied"] and few["pairs"] == 4
    assert not fold_bias(final, {f"g{i}": -1.0 for i in range(5)})["applied"]
    oof = [_s("a", 10.0)]
    assert rescaled(oof, 1.0) == oof
