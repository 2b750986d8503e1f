"""Per-line classifier choice (issue 16 part 2): candidates, the pick rule, and the report in training."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from lineguard_models.classifier_select import (
    CANDIDATES,
    Candidate,
    Evaluated,
    estimated_p50_ms,
    evaluate,
    feature_columns,
    line_candidates,
    pick,
    select_and_fit,
)
from lineguard_models.views import IDENTITY, Views

DEFAULT, OTHER, THIRD = CANDIDATES[0], CANDIDATES[1], CANDIDATES[2]


def ev(c: Candidate, acc: float, loss: float = 0.5, n: int = 100, skipped: str = "") -> Evaluated:
    return Evaluated(c, acc, loss, 0.1, n_images=n, skipped=skipped)


def test_default_kept_unless_beaten_by_at_least_one_image() -> None:
    assert pick([ev(DEFAULT, 0.90), ev(OTHER, 0.905)]) == DEFAULT  # half an image of 100: noise
    assert pick([ev(DEFAULT, 0.90), ev(OTHER, 0.91)]) == OTHER
    # the higher CV accuracy wins, then the lower log-loss; skipped candidates never win
    assert pick([ev(DEFAULT, 0.90), ev(OTHER, 0.93), ev(THIRD, 0.95)]) == THIRD
    assert pick([ev(DEFAULT, 0.90), ev(OTHER, 0.95, 0.4), ev(THIRD, 0.95, 0.3)]) == THIRD
    assert pick([ev(DEFAULT, 0.90), ev(OTHER, float("nan"), skipped="time budget")]) == DEFAULT


def test_line_candidates_follow_the_config_and_profile() -> None:
    cands = line_candidates(("stage5", "stage6"), 0)  # a profile without photometric copies
    assert cands[0] == Candidate("default", ("stage5", "stage6"), 0, "mean_gem")
    # copies 0 twice -> deduplicated: default, stage5+6+7, stage4+5+6+7
    assert len({(c.stages, c.copies, c.pooling) for c in cands}) == len(cands) == 3
    assert all(c.copies == 0 for c in cands) and [c.name for c in cands] == ["default", "s567", "s4567"]
    assert line_candidates(("stage6", "stage7"), 3)[0].copies == 3
    plain = [c for c in CANDIDATES if not c.views]
    assert len(line_candidates(("stage6", "stage7"), 3)) == len(plain)  # the configured stages replace {5,6}
    six = line_candidates(("stage6", "stage7"), 3, free_views=True)
    assert len(six) == len(CANDIDATES) and six[1].stages == ("stage6", "stage7") and six[1].views
    # a line configured for average pooling: every candidate pools by the average too
    mean = line_candidates(("stage5", "stage6"), 2, "mean")
    assert [c.name for c in mean] == ["default", "s56_nocopies", "s567", "s4567"]
    assert {c.pooling for c in mean} == {"mean"}
    # a line that declared no camera profile: the views candidates come right after the default
    free = line_candidates(("stage5", "stage6"), 2, free_views=True)
    assert [c.name for c in free] == ["default", "views", "s56_nocopies", "s567", "s4567", "s4567_views"]
    assert [c.views for c in free] == [False, True, False, False, False, True]
    assert not any(c.views for c in line_candidates(("stage5", "stage6"), 2))  # a declared profile decides


def test_every_candidate_is_within_the_flagged_part_budget_and_unmeasured_is_not() -> None:
    assert all(estimated_p50_ms(c.stages) <= 40.0 for c in line_candidates(("stage5", "stage6"), 2, free_views=True))
    assert estimated_p50_ms(("stage7",)) == float("inf")
    assert estimated_p50_ms(("stage5", "stage6"), 20.0) == pytest.approx(20.0 + 1.2 + 7.8)


def test_feature_columns_slice_the_union() -> None:
    dims = {"stage4": 2, "stage5": 3, "stage6": 1}
    cols = feature_columns(dims, ("stage4", "stage5", "stage6"), ("stage4", "stage6"))
    assert cols.tolist() == [0, 1, 5]
    x = np.arange(6)[None, :]
    assert x[:, feature_columns(dims, ("stage4", "stage5", "stage6"), ("stage5",))].tolist() == [[2, 3, 4]]
    # mean_gem features hold [mean_s, gem_s] per stage: a mean candidate takes the first half of each block
    both = ("stage4", "stage5", "stage6")
    assert feature_columns(dims, both, ("stage5",), have_pooling="mean_gem", want_pooling="mean").tolist() == [4, 5, 6]
    assert feature_columns(dims, both, ("stage4", "stage6"), have_pooling="mean_gem",
                           want_pooling="mean_gem").tolist() == [0, 1, 2, 3, 10, 11]
    with pytest.raises(ValueError, match="cannot be cut"):
        feature_columns(dims, both, ("stage5",), have_pooling="mean", want_pooling="mean_gem")


def test_evaluate_cross_validates_each_candidate_and_skips_past_the_budget() -> None:
    from lineguard_models.classifier import ClassifierConfig
    from lineguard_models.classifier_features import FeatureSet

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 8)
    x = (rng.normal(0, 1, (24, 6)) + 3 * np.eye(3, 6)[y]).astype(np.float32)

    def fs(c: Candidate) -> FeatureSet:
        return FeatureSet(classes=("a", "b", "c"), x=x, y=y, x_aug=np.zeros((0, 6), np.float32),
                          aug_source=np.zeros(0, np.int64))

    cands = line_candidates(("stage5", "stage6"), 2)[:3]
    done = evaluate(fs, cands, config=ClassifierConfig(), seed=0)
    assert [e.candidate for e in done] == cands and all(not e.skipped for e in done)
    assert all(e.cv_accuracy > 0.9 and e.n_images == 24 and e.head is not None for e in done)
    late = evaluate(fs, cands, config=ClassifierConfig(), seed=0, time_budget_s=0.0)
    assert not late[0].skipped and all("time budget" in e.skipped for e in late[1:])  # the default always runs


def _planted(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A 64x64 mono image with noise and one planted pattern: 0 a bright band, 1 a dark stripe, 2 a blob."""
    im = rng.normal(128, 6, (64, 64))
    if kind == 0:
        im[20:40, :] += 60
    elif kind == 1:
        im[:, 28:36] -= 60
    else:
        im[24:40, 24:40] += rng.choice([-70, 70])
    return np.clip(im, 0, 255).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "anomaly_ms"), [(300.0, None), (300.0, 31.0), (300.0, 120.0)])
def test_training_reports_every_candidate_and_the_choice(budget: float, anomaly_ms: float | None) -> None:
    from lineguard.preprocess import InputSpec
    from lineguard_models.classifier import ClassifierConfig, train_classifier

    rng = np.random.default_rng(0)
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
    data = {c: [_planted(rng, i) for _ in range(6)] for i, c in enumerate(("band", "stripe", "blob"))}
    clf = train_classifier(data, spec=spec, seed=0, config=ClassifierConfig(select_time_budget_s=budget),
                           selector=functools.partial(select_and_fit, anomaly_p50_ms=anomaly_ms))
    sel = clf.cv_report["selection"]
    names = [c["name"] for c in sel["candidates"]]
    twins = {n for n in names if n.endswith("_tta")}
    base = [n for n in names if n not in twins]
    assert names[0] == "default" and set(base) == {c.name for c in CANDIDATES}  # no profile: views tried too
    chosen = next(c for c in sel["candidates"] if c["name"] == sel["chosen"])
    assert not chosen["skipped"] and tuple(sel["stages"]) == clf.graph.features.stages
    assert "finetune" not in names  # no tuner given: the fine-tuning candidate is not tried
    tried = {c["name"] for c in sel["candidates"] if not c["skipped"]}
    assert all(0 <= c["cv_accuracy"] <= 1 for c in sel["candidates"] if c["name"] in tried)
    assert sel["anomaly_p50_ms"] == anomaly_ms
    # a flagged part = anomaly engine + 1.2 ms + classifier (stage5+6 7.8 ms, the deeper sets 8.4 ms) <= 40 ms
    expect = {None: set(base), 31.0: {"default", "views", "s56_nocopies"}, 120.0: {"default"}}[anomaly_ms]
    assert tried - twins == expect  # the default always runs: it is what the line gets anyway
    # every views candidate evaluated has its twin (read through the views where unsure), refused only with why
    assert twins == {f"{n}_tta" for n in expect & {"views", "s4567_views"}}
    for c in sel["candidates"]:
        if c["name"] in twins:
            assert c["views_when_unsure"]["views"] == 8
            assert not c["skipped"] or "through the views" in c["skipped"]
        elif c["name"] not in tried:
            assert c["skipped"].startswith("estimated flagged part") and "> budget 40 ms" in c["skipped"]
    probs = clf.predict_proba(data["band"][:2])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_measured_classifier_prices_decide_the_latency_filter() -> None:
    """Where the candidates' graphs were timed on this CPU (``classifier_price``), those times price them, not
    the table: a stage set measured slow is skipped, and the report says which prices were used."""
    from lineguard.preprocess import InputSpec
    from lineguard_models.classifier import ClassifierConfig, train_classifier

    rng = np.random.default_rng(1)
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
    data = {c: [_planted(rng, i) for _ in range(5)] for i, c in enumerate(("band", "stripe"))}
    asked: list[list[tuple[str, ...]]] = []
    asked_views: list[int] = []

    def price(stage_sets: list[tuple[str, ...]], views: Views = IDENTITY) -> dict[str, float]:
        asked.append(list(stage_sets))
        asked_views.append(len(views))
        if len(views) > 1:  # the views twins' second engine: every view averaged
            return {"+".join(s): 40.0 + len(s) for s in stage_sets}
        return {"+".join(s): (30.0 if s == ("stage5", "stage6", "stage7") else 5.0) for s in stage_sets}

    clf = train_classifier(data, spec=spec, seed=0, config=ClassifierConfig(),
                           selector=functools.partial(select_and_fit, anomaly_p50_ms=20.0, classifier_price=price))
    sel = clf.cv_report["selection"]
    assert asked[0] == sorted({c.stages for c in line_candidates(("stage5", "stage6"), 2, free_views=True)})
    by = {c["name"]: c for c in sel["candidates"]}
    # then the views graph of every twin tried (no profile declared: the 8 flips and turns), for its report
    twins = {n: c for n, c in by.items() if n.endswith("_tta") and not c["skipped"]}
    assert twins and asked[1:] == [sorted({tuple(c["stages"]) for c in twins.values()})]
    assert asked_views == [1, 8][: len(asked)]
    for c in twins.values():
        cascade = c["views_when_unsure"]
        assert cascade["views_p50_ms"] == 40.0 + len(c["stages"])
        # anomaly 20 + preprocessing 1.2 + the single view (5 measured) + the views graph
        assert cascade["flagged_through_views_p50_ms"] == pytest.approx(26.2 + 40.0 + len(c["stages"]), abs=0.06)
    assert by["s567"]["skipped"] == "estimated flagged part 51 ms p50 > budget 40 ms"  # 20 + 1.2 + 30
    assert not by["s4567"]["skipped"] and not by["default"]["skipped"]  # 8.4 ms in the table, 5 measured
    assert sel["classifier_p50_ms"]["stage5+stage6+stage7"] == 30.0
    assert sel["classifier_p50_source"].startswith("measured on this CPU")


def _scratch(rng: np.random.Generator, horizontal: bool) -> np.ndarray:
    im = rng.normal(128, 6, (64, 64))
    at, start = rng.integers(8, 56), rng.integers(0, 24)
    if horizontal:
        im[at - 1 : at + 2, start : start + 40] -= 70  # a dark scratch along the feed
    else:
        im[start : start + 40, at - 1 : at + 2] -= 70  # the same scratch across it
    return np.clip(im, 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_views_are_tried_where_no_profile_is_declared_and_refused_where_orientation_is_the_class() -> None:
    """Planted: two classes that differ only by orientation. Turned copies of a scratch along the feed look
    like the other class, so the views candidates must lose the cross-validation and not be chosen; with a
    declared profile the views are the profile's and no views candidate exists."""
    from lineguard.preprocess import InputSpec
    from lineguard_models.augment import CameraProfile
    from lineguard_models.classifier import ClassifierConfig, train_classifier

    rng = np.random.default_rng(3)
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
    data = {"along": [_scratch(rng, True) for _ in range(8)], "across": [_scratch(rng, False) for _ in range(8)]}
    clf = train_classifier(data, spec=spec, seed=0, config=ClassifierConfig(), selector=select_and_fit)
    sel = clf.cv_report["selection"]
    cv = {c["name"]: c["cv_accuracy"] for c in sel["candidates"]}
    assert sel["free_views"] is not None and len(sel["free_views"]) == 8  # square input: the dihedral group
    assert cv["views"] < cv["default"] - 0.2 and cv["s4567_views"] < cv["s4567"] - 0.2
    assert not next(c for c in sel["candidates"] if c["name"] == sel["chosen"])["views"]
    assert sel["views"] == ["identity"] == clf.cv_report["augmentation"]["views"]
    # declared: defects without orientation (flips allowed) -> the profile's views in every candidate
    profile = CameraProfile.conservative_for(spec).model_copy(
        update={"orientation_specific": False, "flips": ("horizontal",)})
    declared = train_classifier(data, spec=spec, seed=0, profile=profile, config=ClassifierConfig(),
                                selector=select_and_fit)
    dsel = declared.cv_report["selection"]
    assert dsel["free_views"] is None and not any(c["views"] for c in dsel["candidates"])
    assert dsel["views"] == ["identity", "hflip"] == declared.cv_report["augmentation"]["views"]


def test_training_views_follow_a_declared_profile_and_leave_an_undeclared_one_to_the_choice() -> None:
    from lineguard.preprocess import InputSpec
    from lineguard_models.augment import CameraProfile
    from lineguard_models.classifier import ClassifierConfig, training_views
    from lineguard_models.views import IDENTITY

    square = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
    long = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=128, input_height=64)
    cfg = ClassifierConfig()
    fixed = CameraProfile.conservative_for(square)  # declared: orientation matters
    flips = fixed.model_copy(update={"orientation_specific": False, "flips": ("vertical",)})
    assert training_views(fixed, square, cfg) == (IDENTITY, None)
    assert training_views(flips, square, cfg) == (flips_views := training_views(flips, square, cfg)[0], None)
    assert flips_views.names == ("identity", "vflip")
    views, free = training_views(None, square, cfg)  # none declared: the choice tries the dihedral group
    assert views == IDENTITY and free is not None and len(free) == 8
    free_long = training_views(None, long, cfg)[1]
    assert free_long is not None and free_long.names == ("identity", "hflip", "vflip", "rot180")  # no quarter turns
    assert training_views(None, square, cfg.model_copy(update={"select": False})) == (IDENTITY, None)
    assert training_views(None, square, cfg.model_copy(update={"orientation_views": False})) == (IDENTITY, None)
