"""Fine-tuning as a candidate of the per-line classifier choice (issue 16 part 2): when it is tried, its time
estimate, the keep rule, and a real run whose report and classifier agree with the choice."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from lineguard.preprocess import InputSpec, prepare
from lineguard_models import classifier_select
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, train_classifier
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_graph import PooledFeatures
from lineguard_models.classifier_head import stratified_folds
from lineguard_models.classifier_select import (
    FINETUNE_NO_VIEWS,
    consider_finetuning,
    select_and_fit,
)
from lineguard_models.finetune import FinetuneConfig, LateStages, estimated_seconds, seconds_per_step, view_maps
from lineguard_models.synth import SynthConfig, render_pixels
from lineguard_models.views import IDENTITY, Views

CLASSES = ("scratch", "pit", "stain")
SPEC = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
FLIPS = CameraProfile.conservative_for(SPEC).model_copy(update={"orientation_specific": False,
                                                                "flips": ("horizontal",)})


def _data(n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    cfg = SynthConfig(width_px=64, height_px=64, channels=1, bit_depth=8, defect_strength=2.0, seed=seed)
    return {c: [render_pixels(cfg, c, i) for i in range(n)] for c in CLASSES}


def _train(n: int, *, profile: CameraProfile | None = FLIPS, anomaly_ms: float | None = None,
           **cfg: Any) -> Any:
    config = ClassifierConfig(**cfg)
    return train_classifier(_data(n), spec=SPEC, profile=profile, seed=0, config=config, selector=select_and_fit,
                            tuner=functools.partial(consider_finetuning, anomaly_p50_ms=anomaly_ms))


def _entry(clf: Any) -> dict[str, Any]:
    sel = clf.cv_report["selection"]
    (entry,) = [c for c in sel["candidates"] if c["name"] == "finetune"]
    return entry


def test_estimate_counts_every_fold_run_and_the_final_run() -> None:
    # 60 images x 8 views, 3 folds: a fold trains on 320 maps = 10 steps of 32, the final run on 480 = 15;
    # (3 x 10 + 15) steps x 4 epochs
    assert estimated_seconds(60, 8, 3, FinetuneConfig(), 0.5) == pytest.approx(45 * 4 * 0.5)
    assert estimated_seconds(60, 1, 3, FinetuneConfig(epochs=1), 1.0) == 3 * 2 + 2


def test_a_training_step_is_timed_on_the_real_blocks() -> None:
    bb = EfficientNetLite0.from_state_dict_file(out_stages=("stage5", "stage6"))
    maps = torch.randn(8, bb.stage_channels["stage5"], 4, 4)
    s = seconds_per_step(bb, maps, stages=("stage5", "stage6"), config=FinetuneConfig(), n_classes=3)
    assert 0.0 < s < 60.0
    before = [p.clone() for p in bb.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, bb.parameters(), strict=True))  # a throwaway copy


def test_prefix_maps_scale_the_frame_as_the_exported_graph_does() -> None:
    """Fine-tuning at ``input_px``: maps of the scaled frame through the late stages = the graph's features."""
    bb = EfficientNetLite0.from_state_dict_file(out_stages=("stage5", "stage6"))
    pooled = PooledFeatures(bb, max_value=255, pooling="mean", resize_to=(48, 48))
    x = torch.from_numpy(np.concatenate([prepare(im, SPEC)[0] for im in _data(1)["pit"]]))
    late = LateStages(bb, stages=("stage5", "stage6"), first_trained_stage="stage6")
    maps = view_maps(bb, x, Views(names=("identity", "hflip")), in_scale=pooled.get_buffer("in_scale"),
                     in_shift=pooled.get_buffer("in_shift"), last_block=late.first_block - 1, resize_to=(48, 48))
    with torch.no_grad():
        assert torch.allclose(late(maps[:, 0]), pooled(x), atol=1e-4)
        assert torch.allclose(late(maps[:, 1]), pooled(torch.flip(x, dims=(3,))), atol=1e-4)
        unscaled = PooledFeatures(bb, max_value=255, pooling="mean")
        assert not torch.allclose(late(maps[:, 0]), unscaled(x), atol=1e-3)


def test_kept_only_when_its_cv_beats_the_frozen_choice_by_one_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule on planted cross-validated accuracies (100 images: one image = 0.01)."""

    def planted(acc: float) -> Any:
        def fake(*_a: Any, **_k: Any) -> tuple[str, dict[str, float], dict[str, Any], float]:
            return "tuned graph", {"a": 0.5}, {"accuracy": acc, "unknown_rate": 0.02, "folds": 3}, 0.9
        return fake

    y = np.repeat([0, 1], 50)
    frozen_folds: list[np.ndarray] = []

    def frozen_oof(fs: FeatureSet, folds: np.ndarray, **_k: Any) -> np.ndarray:
        """The frozen choice re-run on the fine-tuning's folds: 90 of 100 right (its own CV said 0.99)."""
        frozen_folds.append(folds)
        p = np.zeros((100, 2), np.float32)
        p[np.arange(100), y] = 1.0
        p[:10] = p[:10, ::-1]
        return p

    monkeypatch.setattr(classifier_select, "out_of_fold_probs", frozen_oof)
    fs = FeatureSet(classes=("a", "b"), x=np.zeros((100, 2), np.float32), y=y,
                    x_aug=np.zeros((0, 2), np.float32), aug_source=np.zeros(0, np.int64))
    cfg = ClassifierConfig(finetune_candidate_min_per_class=2)
    for acc, kept in ((0.905, False), (0.91, True), (0.95, True)):
        report = {"accuracy": 0.99, "l2": 1e-3,
                  "selection": {"chosen": "default", "candidates": [], "views": ["identity"]}}
        monkeypatch.setattr(classifier_select, "finetuned", planted(acc))
        out = consider_finetuning({}, fs, lambda: None, Views(names=("identity", "hflip")), report, config=cfg, seed=0,
                                  anomaly_p50_ms=10.0)
        (entry,) = report["selection"]["candidates"]
        assert entry["cv_accuracy"] == acc and not entry["skipped"] and entry["views_below"] == 0.9
        assert entry["frozen_cv_same_folds"] == 0.9 and entry["beats_frozen"] == kept
        assert (out is not None) == kept
        if out is not None:
            assert out[0] == "tuned graph" and out[3] == 0.9
            sel = out[2]["selection"]
            assert sel["chosen"] == "finetune" and sel["views"] == ["identity", "hflip"] and sel["pooling"] == "mean"
            assert "vs the frozen choice default 0.9000 on the same 3 folds" in sel["reason"]
        assert report["selection"]["chosen"] == "default"  # the frozen report itself is not rewritten
    # the frozen choice was measured on the fine-tuning's folds: 3 stratified folds of the same seed
    assert all(np.array_equal(f, stratified_folds(y, 3, 0)) for f in frozen_folds)
    monkeypatch.setattr(classifier_select, "finetuned", planted(0.5))  # worse, yet kept when forced
    forced = consider_finetuning({}, fs, lambda: None, Views(names=("identity", "hflip")),
                                 {"accuracy": 0.99, "l2": 1e-3, "selection": {"chosen": "default", "candidates": []}},
                                 config=cfg, seed=0, anomaly_p50_ms=10.0, force=True)
    assert forced is not None and forced[2]["selection"]["reason"] == "forced (benchmark)"


def test_a_views_twin_as_the_frozen_choice_is_compared_as_the_edge_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The frozen choice is a views twin (``selection.views_below``): on the fine-tuning's folds it is read through
    one view and through the views below views_below. Planted: one view names 90 of 100 and is unsure (0.6) of the
    10 it gets wrong, the views name all 100: the twin's 1.00 keeps a fine-tuned 0.95 out, the one view's 0.90
    would not have."""
    y = np.repeat([0, 1], 50)

    def frozen_oof(fs: FeatureSet, folds: np.ndarray, **_k: Any) -> np.ndarray:
        p = np.zeros((100, 2), np.float32)
        p[np.arange(100), y] = 1.0
        if not fs.average_views:
            p[:10] = np.where(p[:10] > 0.5, 0.4, 0.6)  # wrong and unsure
        return p

    def tuned(*_a: Any, **_k: Any) -> tuple[str, dict[str, float], dict[str, Any], float]:
        return "tuned graph", {"a": 0.5}, {"accuracy": 0.95, "unknown_rate": 0.02, "folds": 3}, 0.9

    monkeypatch.setattr(classifier_select, "out_of_fold_probs", frozen_oof)
    monkeypatch.setattr(classifier_select, "finetuned", tuned)
    fs = FeatureSet(classes=("a", "b"), x=np.zeros((100, 2), np.float32), y=y, x_aug=np.zeros((0, 2), np.float32),
                    aug_source=np.zeros(0, np.int64), x_views=np.zeros((100, 1, 2), np.float32))
    cfg = ClassifierConfig(finetune_candidate_min_per_class=2)
    for below, frozen_cv, kept in ((0.8, 1.0, False), (None, 0.9, True)):
        report = {"accuracy": 0.99, "l2": 1e-3, "selection": {"chosen": "views_tta" if below else "views",
                                                              "candidates": [], "views_below": below}}
        out = consider_finetuning({}, fs, lambda: None, Views(names=("identity", "hflip")), report, config=cfg,
                                  seed=0, anomaly_p50_ms=10.0)
        (entry,) = report["selection"]["candidates"]
        assert entry["frozen_cv_same_folds"] == frozen_cv and entry["beats_frozen"] == kept == (out is not None)


def test_skipped_below_the_images_per_class_and_where_no_view_is_allowed() -> None:
    small = _train(6)  # default finetune_candidate_min_per_class 30
    entry = _entry(small)
    assert entry["skipped"].startswith("6 images in the smallest class, below finetune_candidate_min_per_class 30")
    assert small.views_below is None and small.cv_report["selection"]["chosen"] != "finetune"
    fixed = _train(6, profile=CameraProfile.conservative_for(SPEC), finetune_candidate_min_per_class=2)
    assert _entry(fixed)["skipped"] == FINETUNE_NO_VIEWS
    slow_line = _train(6, anomaly_ms=120.0, finetune_candidate_min_per_class=2)
    assert _entry(slow_line)["skipped"].startswith("estimated flagged part") and "> budget 40 ms" in \
        _entry(slow_line)["skipped"]
    none = _train(6, finetune_candidate=None)
    assert all(c["name"] != "finetune" for c in none.cv_report["selection"]["candidates"])


def test_skipped_when_its_estimate_exceeds_what_the_frozen_candidates_left() -> None:
    data, frozen_report = _data(6), None

    def tuner(*a: Any, **k: Any) -> Any:
        nonlocal frozen_report
        frozen_report = a[4]
        assert 0 < k["spent_s"] < 120  # the frozen choice's own time, measured by train_classifier
        return consider_finetuning(*a, **{**k, "spent_s": 99.99})

    clf = train_classifier(data, spec=SPEC, profile=FLIPS, seed=0, selector=select_and_fit, tuner=tuner,
                           config=ClassifierConfig(finetune_candidate_min_per_class=2,
                                                   finetune_candidate_budget_s=100.0))
    skipped = _entry(clf)["skipped"]
    assert skipped.startswith("fine-tuning estimated at") and "> its budget 0 s" in skipped  # 0.01 s left
    assert "18 images x 2 views" in skipped and clf.views_below is None and frozen_report is not None
    spent = _train(6, finetune_candidate_min_per_class=2, finetune_candidate_budget_s=0.001)
    assert _entry(spent)["skipped"].startswith("time budget 0 s spent by the frozen candidates")


@pytest.mark.slow
def test_a_real_candidate_run_is_reported_and_the_classifier_follows_the_choice() -> None:
    clf = _train(8, finetune_candidate_min_per_class=2, finetune_candidate=FinetuneConfig(epochs=2))
    entry, sel = _entry(clf), clf.cv_report["selection"]
    assert not entry["skipped"] and 0.0 <= entry["cv_accuracy"] <= 1.0 and entry["fit_s"] > 0
    assert entry["views"] and entry["flagged_p50_ms"] == pytest.approx(27.0 + 1.2 + 7.8)  # table prices
    frozen = next(c for c in sel["candidates"] if c["name"] == sel["chosen"] or sel["chosen"] == "finetune")
    if sel["chosen"] == "finetune":
        assert clf.views_below is not None and clf.views == Views(names=("identity", "hflip"))
        assert clf.graph.features.pooling == "mean" and clf.cv_report["accuracy"] == entry["cv_accuracy"]
    else:
        assert clf.views_below is None and clf.views == IDENTITY and frozen["cv_accuracy"] is not None
        assert entry["cv_accuracy"] < clf.cv_report["accuracy"] + 1 / 24
    probs = clf.predict_proba(_data(2, seed=9)["stain"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_a_skipped_candidate_never_builds_its_extractor() -> None:
    def never() -> Any:
        raise AssertionError("the fine-tuning extractor was built for a skipped candidate")

    fs = FeatureSet(classes=("a", "b"), x=np.zeros((12, 2), np.float32), y=np.repeat([0, 1], 6),
                    x_aug=np.zeros((0, 2), np.float32), aug_source=np.zeros(0, np.int64))
    flips = Views(names=("identity", "hflip"))
    for cfg, views, why in ((ClassifierConfig(), flips, "6 images in the smallest class"),
                            (ClassifierConfig(finetune_candidate_min_per_class=2), IDENTITY, FINETUNE_NO_VIEWS),
                            (ClassifierConfig(finetune_candidate_min_per_class=2, finetune_candidate_budget_s=1.0),
                             flips, "time budget 1 s spent")):
        report: dict[str, Any] = {"accuracy": 0.9, "l2": 1e-3, "selection": {"chosen": "default", "candidates": []}}
        assert consider_finetuning({}, fs, never, views, report, config=cfg, seed=0, spent_s=5.0) is None
        assert report["selection"]["candidates"][0]["skipped"].startswith(why)
