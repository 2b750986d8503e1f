"""The classifier's learning curve (``lineguard_models.classifier_curve``): the power law, its refusals, the
thinned folds' honesty, and a forecast checked against images the curve never saw."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lineguard_models import classifier_curve as cc
from lineguard_models.classifier import out_of_fold_probs
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_head import cv_folds, fit_head
from lineguard_models.report import classifier_rows


def planted(n_per_class: int, seed: int, *, d: int = 40, k: int = 3, spread: float = 0.9,
            x_aug_copies: int = 0) -> FeatureSet:
    """Gaussian classes whose means differ a little in every dimension: more images keep paying."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0.0, spread / math.sqrt(d) * 2.0, (k, d))
    y = np.repeat(np.arange(k), n_per_class)
    x = (means[y] + rng.normal(0.0, 1.0, (len(y), d))).astype(np.float32)
    src = np.repeat(np.arange(len(y)), x_aug_copies)
    x_aug = (x[src] + rng.normal(0.0, 0.1, (len(src), d))).astype(np.float32)
    return FeatureSet(classes=tuple(f"c{i}" for i in range(k)), x=x, y=y.astype(np.int64), x_aug=x_aug,
                      aug_source=src.astype(np.int64))


def test_the_power_law_is_recovered_and_inverted() -> None:
    a, b = 0.3, 0.7
    points = [(n, 1.0 - a * n ** -b) for n in (4.0, 6.0, 8.0, 10.0)]
    fit = cc.fit_power_law(points, n_images=10_000)
    assert fit is not None
    assert fit[0] == pytest.approx(a, rel=1e-6) and fit[1] == pytest.approx(b, rel=1e-6)
    assert cc.accuracy_at(fit, 20.0) == pytest.approx(1.0 - a * 20.0 ** -b)
    need = cc.needed_per_class(fit, 0.95)
    assert need == math.ceil((a / 0.05) ** (1.0 / b))
    assert cc.accuracy_at(fit, need) >= 0.95 > cc.accuracy_at(fit, need - 1)


def test_no_extrapolation_from_a_flat_or_errorless_curve() -> None:
    assert cc.fit_power_law([(4.0, 0.80), (6.0, 0.79), (8.0, 0.81), (10.0, 0.80)], 60) is None
    assert cc.fit_power_law([(4.0, 0.70), (6.0, 0.68), (8.0, 0.66)], 60) is None  # rising error
    assert cc.fit_power_law([(4.0, 1.0), (8.0, 1.0)], 60) is None
    assert cc.fit_power_law([(4.0, 0.7), (4.0, 0.8)], 60) is None  # one size: no slope to read
    # a steep fall from a few noisy points is clipped, and the level refitted through the points
    fit = cc.fit_power_law([(2.0, 0.5), (4.0, 0.99)], 10_000)
    assert fit is not None and fit[1] == cc.MAX_SLOPE
    # a target the curve reaches only beyond MAX_NEEDED per class is said as such, not as a number
    assert cc.needed_per_class((1.0, 0.1), 0.99) is None


def test_a_held_out_image_or_its_copy_never_trains_its_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = planted(10, 0, x_aug_copies=2)
    # tag every row with its original image: column 0 of the image and of its copies
    tag = np.arange(len(fs.y), dtype=np.float32)
    fs.x[:, 0] = tag
    fs.x_aug[:, 0] = tag[fs.aug_source]
    folds = cv_folds(fs.y, 5, seed=0)
    seen: list[set[int]] = []

    def recording_fit(x: np.ndarray, y: np.ndarray, k: int, **kw: object) -> object:
        seen.append({int(v) for v in x[:, 0]})
        return fit_head(x, y, k, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cc, "fit_head", recording_fit)
    cc.curve_points(fs, folds, l2=1e-3, max_iter=50, seed=0, oof_accuracy=0.5, shares=(0.5,), draws=1)
    assert len(seen) == len(np.unique(folds))
    for f, trained in zip(np.unique(folds), seen, strict=True):
        held_out = set(np.flatnonzero(folds == f).tolist())
        assert not trained & held_out
        # thinned to half of each class's training images (at least 2)
        assert len(trained) == sum(max(2, round(0.5 * int(((folds != f) & (fs.y == c)).sum())))
                                   for c in np.unique(fs.y))


def _oof_accuracy(fs: FeatureSet, folds: np.ndarray, l2: float) -> float:
    return float((out_of_fold_probs(fs, folds, l2=l2, max_iter=200).argmax(1) == fs.y).mean())


def test_the_forecast_matches_images_the_curve_never_saw() -> None:
    """Trained on 20 per class, the curve's figures for 20 and 40 per class against heads trained on 20 and 40
    per class and scored on 900 fresh images (mean of three draws); labels shuffled, no forecast is made."""
    l2, now, twice, measured_now, measured_twice = 1e-2, [], [], [], []
    for seed in range(3):
        fs = planted(20, seed, d=20, spread=1.2)
        folds = cv_folds(fs.y, 5, seed=seed)
        curve = cc.learning_curve(fs, folds, l2=l2, max_iter=200, seed=seed,
                                  oof_accuracy=_oof_accuracy(fs, folds, l2), shares=(0.4, 0.6, 0.8), draws=3)
        assert not curve["flat"] and curve["fit"]["b"] > cc.MIN_SLOPE
        assert curve["points"][0][1] < curve["points"][-1][1]  # fewer images name fewer right
        assert curve["accuracy_at_twice"] > curve["accuracy_now"]
        needs = [curve["needed_per_class"][t] for t in ("0.9", "0.95", "0.99")]
        assert all(a is None or b is None or a <= b for a, b in itertools.pairwise(needs))
        test = planted(300, 100 + seed, d=20, spread=1.2)
        for n, out in ((20, measured_now), (40, measured_twice)):
            train = fs if n == 20 else planted(n, seed, d=20, spread=1.2)
            head = fit_head(train.x, train.y, 3, l2=l2)
            out.append(float((head.probs(test.x).argmax(1) == test.y).mean()))
        now.append(curve["accuracy_now"])
        twice.append(curve["accuracy_at_twice"])
    assert np.mean(measured_twice) > np.mean(measured_now) + 0.02  # the planted line does gain from labelling
    assert np.mean(now) == pytest.approx(np.mean(measured_now), abs=0.04)
    assert np.mean(twice) == pytest.approx(np.mean(measured_twice), abs=0.04)

    fs = planted(20, 0, d=20, spread=1.2)
    noise = FeatureSet(classes=fs.classes, x=fs.x, y=np.random.default_rng(5).permutation(fs.y),
                       x_aug=fs.x_aug, aug_source=fs.aug_source)
    folds = cv_folds(noise.y, 5, seed=1)
    flat = cc.learning_curve(noise, folds, l2=l2, max_iter=200, seed=1, oof_accuracy=_oof_accuracy(noise, folds, l2),
                             shares=(0.4, 0.6, 0.8), draws=3)
    if flat["flat"]:
        assert flat["accuracy_at_twice"] is None and set(flat["needed_per_class"].values()) == {None}
        assert "flat" in cc.curve_sentence(flat)
    else:  # chance-level points may slope by luck: then nothing near a target is promised
        assert flat["needed_per_class"]["0.9"] is None or flat["needed_per_class"]["0.9"] > 100


def test_the_training_report_states_the_curve() -> None:
    curve = {"points": [[4.0, 0.7], [6.0, 0.76], [8.0, 0.8], [10.0, 0.82]], "images_per_class": 12.5,
             "fit": {"a": 1.1, "b": 0.6}, "flat": False, "accuracy_now": 0.84, "accuracy_at_twice": 0.89,
             "needed_per_class": {"0.9": 30, "0.95": 120, "0.99": None}}
    facts, _, _ = classifier_rows({"accuracy": 0.8, "folds": 5, "learning_curve": curve})
    line = next(f for f in facts if f.startswith("Learning curve"))
    assert "with 12 images per class about 84.0%" in line and "with 25 about 89.0%" in line
    assert "90% about 30 per class" in line and f"99% more than {cc.MAX_NEEDED} per class" in line
    flat = {**curve, "fit": None, "flat": True}
    assert any("unlikely to name more right" in f for f in classifier_rows({"learning_curve": flat})[0])
    perfect = {**curve, "fit": None, "flat": False, "errorless": True}
    assert any("every image named right" in f for f in classifier_rows({"learning_curve": perfect})[0])


def test_a_line_named_right_at_every_size_is_told_so_not_called_flat() -> None:
    fs = planted(10, 0, spread=40.0)  # classes far apart: every share names every held-out image
    curve = cc.learning_curve(fs, cv_folds(fs.y, 5, seed=0), l2=1e-3, max_iter=100, seed=0, oof_accuracy=1.0)
    assert curve["errorless"] and not curve["flat"] and curve["fit"] is None
    assert all(p[1] == 1.0 for p in curve["points"])
    assert cc.curve_sentence(curve).startswith("Learning curve: every image named right")
