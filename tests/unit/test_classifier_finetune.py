"""Fine-tuning the classifier's late stages on tiny generated defects: what moves, what must not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lineguard.errors import ConfigError
from lineguard.preprocess import InputSpec, prepare
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, fit_head, train_classifier
from lineguard_models.classifier_graph import PROBS_OUTPUT, PooledFeatures
from lineguard_models.finetune import (
    VIEWS_BELOW_GRID,
    FinetuneConfig,
    HeadParams,
    LateStages,
    Views,
    cascade_probs,
    choose_views_below,
    finetune,
    internal_split,
    view_maps,
)
from lineguard_models.synth import SynthConfig, render_pixels

CLASSES = ("scratch", "pit", "stain")
STAGES = ("stage5", "stage6", "stage7")
SPEC = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)


def _maps(backbone: EfficientNetLite0, views: Views) -> tuple[torch.Tensor, npt.NDArray[np.int64]]:
    cfg = SynthConfig(width_px=64, height_px=64, channels=1, bit_depth=8, defect_strength=2.0)
    images = [render_pixels(cfg, c, i) for c in CLASSES for i in range(6)]
    y = np.repeat(np.arange(len(CLASSES)), 6).astype(np.int64)
    pooled = PooledFeatures(backbone, max_value=SPEC.max_value)
    x = torch.from_numpy(np.concatenate([prepare(im, SPEC)[0] for im in images]))
    last = LateStages(backbone, stages=STAGES, first_trained_stage="stage6").first_block - 1
    maps = view_maps(backbone, x, views, in_scale=pooled.get_buffer("in_scale"),
                     in_shift=pooled.get_buffer("in_shift"), last_block=last)
    return maps, y


def _fit(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> HeadParams:
    h = fit_head(x, y, len(CLASSES), l2=3e-3, max_iter=60)
    return h.mu, h.sd, h.weight, h.bias


def _loss(late: LateStages, maps: torch.Tensor, y: npt.NDArray[np.int64], head: Any) -> float:
    mu, sd, w, b = (torch.as_tensor(a) for a in head)
    with torch.no_grad():
        logits = ((late(maps) - mu) / sd) @ w + b
    return float(F.cross_entropy(logits, torch.as_tensor(y)))


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=STAGES)


def test_views_follow_the_profile() -> None:
    # the full rules live in test_classifier_views.py; fine-tuning uses the same views
    assert Views.for_profile(flips=(), rotate_90=False, square=True).names == ("identity",)
    assert len(Views.for_profile(flips=("horizontal", "vertical"), rotate_90=True, square=True).names) == 8
    # a non-square input is never turned by 90 degrees (its size would change): flips and the half turn
    assert len(Views.for_profile(flips=("horizontal",), rotate_90=True, square=False).names) == 4
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert torch.equal(Views.apply("rot180", x), x.flip(2).flip(3))


def test_internal_split_keeps_every_class_in_both_parts() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2] * 2, np.int64)
    val = internal_split(y, 0.2, seed=0)
    for c in range(3):
        assert 1 <= val[y == c].sum() < (y == c).sum()
    assert val[y == 0].sum() == 2


def test_finetune_trains_only_late_stages_and_lowers_the_loss(backbone: EfficientNetLite0) -> None:
    views = Views.for_profile(flips=("horizontal", "vertical"), rotate_90=False, square=True)
    maps, y = _maps(backbone, views)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = FinetuneConfig(epochs=4, batch_size=6, lr_backbone=3e-4, label_smoothing=0.0, val_fraction=0.0)
    res = finetune(backbone, maps, y, stages=STAGES, fit_head=_fit, config=cfg, seed=0)
    # the caller's backbone is untouched; the copy changed only from stage6 on
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    first = LateStages(backbone, stages=STAGES, first_trained_stage="stage6").first_block
    tuned = res.backbone.state_dict()
    changed = {k.split(".")[1] for k, v in tuned.items() if not torch.equal(before[k], v)}
    assert changed and all(int(b) >= first for b in changed), changed
    # BatchNorm running statistics are frozen even inside the trained blocks
    assert all(torch.equal(before[k], tuned[k]) for k in tuned if "running_" in k)
    frozen = LateStages(backbone, stages=STAGES, first_trained_stage="stage6")(maps[:, 0])
    frozen_head = _fit(frozen.detach().numpy(), y)
    start = _loss(LateStages(backbone, stages=STAGES, first_trained_stage="stage6"), maps[:, 1], y, frozen_head)
    end = _loss(LateStages(res.backbone, stages=STAGES, first_trained_stage="stage6"), maps[:, 1], y,
                (res.mu, res.sd, res.weight, res.bias))
    assert end < start, (start, end)


def test_validation_split_picks_an_epoch_count(backbone: EfficientNetLite0) -> None:
    maps, y = _maps(backbone, Views(names=("identity",)))
    cfg = FinetuneConfig(epochs=3, batch_size=6, val_fraction=0.34)
    res = finetune(backbone, maps, y, stages=STAGES, fit_head=_fit, config=cfg, seed=1)
    assert len(res.val_log_loss) == 3
    assert res.epochs == int(np.argmin(res.val_log_loss)) + 1


FREE = CameraProfile(sensor="mono", bit_depth=8, orientation_specific=False, flips=("horizontal",),
                     copies_per_image=0)
TUNED = ClassifierConfig(l2_grid=(3e-3,), cv_folds=3, max_iter=60, average_views=True,
                         finetune=FinetuneConfig(epochs=1, batch_size=16), finetune_folds=2)


def _by_class(n: int, start: int = 0) -> dict[str, list[Any]]:
    cfg = SynthConfig(width_px=64, height_px=64, channels=1, bit_depth=8, defect_strength=2.0)
    return {c: [render_pixels(cfg, c, start + i) for i in range(n)] for c in CLASSES}


def test_fine_tuning_needs_view_averaging() -> None:
    with pytest.raises(ValidationError, match="average_views"):
        ClassifierConfig(finetune=FinetuneConfig())


def test_train_classifier_fine_tunes_and_exports_what_it_measured(tmp_path: Path) -> None:
    images = _by_class(6)
    clf = train_classifier(images, spec=SPEC, profile=FREE, seed=0, config=TUNED)
    report = clf.cv_report
    assert "fine-tuned" in report["method"] and report["folds"] == 2
    assert report["frozen"]["folds"] == 3  # the frozen fit's own cross-validation is kept beside it
    assert report["finetune"]["epochs"] == 1 and report["finetune"]["maps_mib"] > 0
    assert clf.views.names == ("identity", "hflip")  # the graph averages the views it was trained on
    assert all(0.0 <= t <= TUNED.max_min_confidence for t in clf.min_confidence.values())
    # only the trained stage moved: stage5 (the frozen prefix) is ImageNet's, stage6 is not
    imagenet = EfficientNetLite0.from_state_dict_file(out_stages=TUNED.stages)
    late = LateStages(imagenet, stages=TUNED.stages, first_trained_stage="stage6")
    tuned = clf.graph.features.backbone
    moved = {i for i, (a, b) in enumerate(zip(imagenet._blocks, tuned._blocks, strict=False))
             if not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(),
                                                          strict=True))}
    assert moved and min(moved) >= late.first_block, moved
    # views only where the single view is unsure: the threshold was chosen out of fold and reported
    assert clf.views_below in VIEWS_BELOW_GRID
    assert report["views_only_when_unsure"]["views_below"] == clf.views_below
    assert clf.classifier_spec().views_below == clf.views_below
    # the two exported ONNX graphs (one view; every view averaged), combined as the edge combines them,
    # compute the probabilities the training measured
    assert clf.export_onnx(tmp_path / "c.onnx").file == "c.onnx"
    views_engine = clf.export_views_onnx(tmp_path / "v.onnx")
    assert views_engine is not None and views_engine.outputs == {"probs": PROBS_OUTPUT}
    unseen = [im for v in _by_class(2, start=50).values() for im in v]
    batch = np.concatenate([prepare(im, SPEC)[0] for im in unseen]).astype(np.float32)
    one, every = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(
        [PROBS_OUTPUT], {"image": batch})[0] for f in ("c.onnx", "v.onnx"))
    assert not np.allclose(one, every, atol=1e-3)  # the views graph really averages other views
    np.testing.assert_allclose(cascade_probs(one, every, clf.views_below), clf.predict_proba(unseen), atol=1e-4)
    # without it (views_only_when_unsure false) the one graph averages every view, as before
    always = TUNED.model_copy(update={"views_only_when_unsure": False})
    plain = train_classifier(_by_class(6), spec=SPEC, profile=FREE, seed=0, config=always)
    assert plain.views_below is None and plain.export_views_onnx(tmp_path / "none.onnx") is None
    assert "views_only_when_unsure" not in plain.cv_report


def test_views_threshold_is_the_smallest_that_keeps_the_views_accuracy() -> None:
    y = np.array([0, 1, 0, 1, 0, 1], np.int64)
    views = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.7, 0.3], [0.2, 0.8]], np.float32)
    identity = views.copy()
    identity[3] = [0.85, 0.15]  # wrong through one view at p=0.85; the views put it right
    assert choose_views_below(identity, views, y) == 0.9  # 0.8 would leave it wrong
    got = cascade_probs(identity, views, 0.9)
    np.testing.assert_array_equal(got[3], views[3])
    np.testing.assert_array_equal(got[0], identity[0])  # sure through one view: the views are not used
    # where the single view already answers as well as the views, the lowest threshold
    assert choose_views_below(views, views, y) == min(VIEWS_BELOW_GRID)
    # a mistake the single view makes with p=0.97: 0.99; with p=0.995 only the last resort is left
    identity[3] = [0.97, 0.03]
    assert choose_views_below(identity, views, y) == 0.99
    identity[3] = [0.995, 0.005]
    assert choose_views_below(identity, views, y) == 1.0
    # the views' own mistakes do not raise it: identity right where the views are wrong
    wrong_views = views.copy()
    wrong_views[5] = [0.6, 0.4]
    assert choose_views_below(views, wrong_views, y) == min(VIEWS_BELOW_GRID)


def test_the_map_cache_cap_stops_before_fine_tuning() -> None:
    cfg = TUNED.model_copy(update={"finetune_max_map_mib": 0.01})
    with pytest.raises(ConfigError, match="finetune_max_map_mib"):
        train_classifier(_by_class(6), spec=SPEC, profile=FREE, seed=0, config=cfg)
