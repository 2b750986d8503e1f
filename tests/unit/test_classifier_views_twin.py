"""The views candidates' twins (``classifier_select.views_twin``, stop 22): the same head read through one view
and through every view averaged where that one is unsure, judged by the same cross-validation.

Planted features: each image is its class centre plus noise drawn afresh for every orientation view, so the
average of the 8 views is a cleaner reading than any one of them. How noisy decides what the twin must do:
little noise, one view is sure of almost every image (few through the views); moderate noise, the views name
images one view gets wrong (the twin's CV beats the default and ``pick`` takes it); heavy noise, one view is
unsure of most images and the twin is refused (the median flagged part would pay every view).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lineguard_models.classifier import ClassifierConfig
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_select import (
    MAX_THROUGH_VIEWS,
    Candidate,
    evaluate,
    pick,
    probs_as_read,
    views_twin,
    with_views_twins,
)
from lineguard_models.finetune import VIEWS_BELOW_GRID

DEFAULT = Candidate("default", ("stage5",), 0, "mean")
VIEWS = Candidate("views", ("stage5",), 0, "mean", views=True)


def _planted(noise: float, n: int = 12, k: int = 3, d: int = 6, n_views: int = 8, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, d))
    y = np.repeat(np.arange(k), n)
    x = centres[y][:, None, :] + rng.normal(0, noise, (len(y), n_views, d))
    return FeatureSet(classes=tuple(f"c{i}" for i in range(k)), x=x[:, 0].astype(np.float32), y=y,
                      x_aug=np.zeros((0, d), np.float32), aug_source=np.zeros(0, np.int64),
                      x_views=x[:, 1:].astype(np.float32))


def _evaluated(fs: FeatureSet, config: ClassifierConfig) -> list:
    one_view = replace(fs, x_views=None)  # the default trains and reads the identity view only
    return evaluate(lambda c: fs if c.views else one_view, [DEFAULT, VIEWS], config=config, seed=0)


def test_the_twin_reads_the_views_where_unsure_and_wins_where_they_name_more() -> None:
    fs, cfg = _planted(1.0), ClassifierConfig()
    default, views = _evaluated(fs, cfg)
    twin = views_twin(views, fs, config=cfg, seed=0)
    cascade = twin.report["views_only_when_unsure"]
    assert not twin.skipped and twin.candidate.name == "views_tta" and twin.candidate.views_when_unsure
    assert cascade["views_below"] in VIEWS_BELOW_GRID and cascade["views"] == 8
    assert 0 < cascade["through_views_oof"] <= MAX_THROUGH_VIEWS
    # the views name more out of fold than one view does, and the twin keeps what they add
    assert cascade["accuracy_views_oof"] > cascade["accuracy_identity_oof"]
    assert cascade["accuracy_identity_oof"] == pytest.approx(views.cv_accuracy, abs=1e-4)  # its own folds and L2
    assert twin.cv_accuracy == pytest.approx(cascade["accuracy_views_oof"], abs=1e-4)
    assert twin.cv_accuracy > default.cv_accuracy
    # the same head, and the identity view's min_confidence floors
    assert twin.head is views.head and twin.thresholds == views.thresholds
    assert pick([default, views, twin]) == twin.candidate
    # held out, read as the edge reads the bundle: one view, the averaged views below views_below
    test = _planted(1.0, seed=1)
    rows = np.arange(len(test.y))
    one, every = (replace(test, average_views=a).probs(views.head, rows) for a in (False, True))
    unsure = one.max(1) < cascade["views_below"]
    expect = np.where(unsure[:, None], every, one)
    np.testing.assert_allclose(probs_as_read(twin, test, rows), expect)
    np.testing.assert_allclose(probs_as_read(views, test, rows), one)
    assert unsure.any() and not unsure.all()


def test_few_unsure_images_few_through_the_views() -> None:
    fs, cfg = _planted(0.5), ClassifierConfig()
    twin = views_twin(_evaluated(fs, cfg)[1], fs, config=cfg, seed=0)
    assert not twin.skipped and twin.report["views_only_when_unsure"]["through_views_oof"] < 0.1


def test_a_twin_that_sends_most_parts_through_the_views_is_refused_with_the_reason() -> None:
    fs, cfg = _planted(1.5), ClassifierConfig()
    default, views = _evaluated(fs, cfg)
    twin = views_twin(views, fs, config=cfg, seed=0)
    assert twin.skipped.endswith("(> 50 %: the median flagged part would pay 8 backbone passes)")
    assert twin.report["views_only_when_unsure"]["through_views_oof"] > MAX_THROUGH_VIEWS
    summary = twin.summary()
    assert summary["cv_accuracy"] is None and summary["views_when_unsure"]["views_below"] in VIEWS_BELOW_GRID
    assert pick([default, views, twin]) in (DEFAULT, VIEWS)  # a refused twin is never picked


@pytest.mark.parametrize("on", [True, False])
def test_twins_follow_the_config_and_the_time_left(on: bool) -> None:
    fs, cfg = _planted(1.0), ClassifierConfig(views_when_unsure=on)
    evs = _evaluated(fs, cfg)
    out = with_views_twins(evs, lambda c: fs, config=cfg, seed=0)
    assert [e.candidate.name for e in out] == (["default", "views", "views_tta"] if on else ["default", "views"])
    assert out[:2] == evs  # the default stays first for pick
    if on:
        late = with_views_twins(evs, lambda c: fs, config=cfg, seed=0, time_left_s=-1.0)
        assert late[2].skipped.startswith("time budget spent") and late[2].candidate.views_when_unsure
