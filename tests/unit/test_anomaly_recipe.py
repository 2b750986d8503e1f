"""The anomaly recipe's pieces on small generated data: input geometry, the fractional coreset, bank
turns, the nearest-neighbour search and the image scores (docs/anomaly-model.md)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lineguard.preprocess import InputSpec
from lineguard_models.anomaly import AnomalyModelConfig, AnomalyScorer, ScorerSpec, fit_anomaly_model, turned
from lineguard_models.backbone import BackboneConfig, EfficientNetLite0, load_backbone
from lineguard_models.coreset import StreamingCoreset, greedy_kcenter
from lineguard_models.pipeline import TrainConfig, anomaly_model_config, input_size_for_side


@pytest.mark.parametrize(("w", "h", "px", "side", "want"), [
    (384, 156, 224, "short", (544, 224)),  # long frame: short side 224, long side grows (384/156 x 224 = 551)
    (156, 384, 224, "short", (224, 544)),  # the same frame standing up
    (384, 156, 224, "long", (224, 96)),  # the previous rule: the long side gets 224, detail is lost
    (300, 300, 320, "short", (320, 320)),
    (2448, 2048, 224, "short", (256, 224)),  # 1.195 x 224 = 268 -> 256 (multiples of 32)
])
def test_input_geometry_keeps_the_aspect_ratio(w: int, h: int, px: int, side: str, want: tuple[int, int]) -> None:
    assert input_size_for_side(w, h, px, side) == want  # type: ignore[arg-type]


def test_greedy_coreset_is_nested_and_spreads() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16)
    big = greedy_kcenter(x, 50, generator=torch.Generator().manual_seed(5), selection_dim=None)
    small = greedy_kcenter(x, 20, generator=torch.Generator().manual_seed(5), selection_dim=None)
    assert torch.equal(big[:20], small)  # the first k picks do not depend on the final size
    # each greedy pick is the point farthest from those chosen before it: covering radius shrinks
    radii = [torch.cdist(x, x[big[:k]]).amin(1).max().item() for k in (5, 20, 50)]
    assert radii[0] > radii[1] > radii[2]
    del gen


def test_fractional_bank_is_the_share_of_every_row_seen() -> None:
    cs = StreamingCoreset(bank_size=10_000, buffer_rows=10_000, seed=0, fraction=0.1)
    for _ in range(7):
        cs.add(torch.randn(130, 8))
    assert cs.bank().shape == (math.ceil(0.1 * 910), 8)
    capped = StreamingCoreset(bank_size=40, buffer_rows=200, seed=0, fraction=0.5)
    for _ in range(7):  # merge-and-reduce to the cap on the way, the cap at the end
        capped.add(torch.randn(130, 8))
    assert capped.bank().shape == (40, 8) and capped.peak_rows <= 200 + 130 + 40
    every = StreamingCoreset(bank_size=10_000, buffer_rows=10_000, seed=0, fraction=1.0)
    rows = torch.randn(300, 8)
    every.add(rows)
    assert torch.equal(every.bank().sort(dim=0).values, rows.sort(dim=0).values)  # every patch, nothing lost


def test_default_buffer_reduces_a_320px_line_once() -> None:
    """50 images at 320 px give 80,000 stage3 patches (a 40x40 grid each): with the default buffer the
    coreset is one greedy pass, so its cost grows as the fold fits' does (autobudget's quadratic law)."""
    cfg = AnomalyModelConfig()
    cs = StreamingCoreset(bank_size=cfg.bank_size, buffer_rows=cfg.buffer_rows, seed=0, fraction=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        cs.add(torch.randn(40 * 40, 4, generator=gen))
    assert cs.reductions == 0
    assert cs.bank().shape == (800, 4) and cs.reductions == 1
    small = StreamingCoreset(bank_size=1000, buffer_rows=65_536, seed=0, fraction=0.01)
    for _ in range(50):
        small.add(torch.randn(40 * 40, 4, generator=gen))
    small.bank()
    assert small.reductions == 2  # the former default: a second, bank_size-sized pass on the way


def test_bank_turns() -> None:
    sq = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    four = turned(sq, 4)
    assert four.shape[0] == 8 and torch.equal(four[2], torch.rot90(sq[0], 1, dims=(1, 2)))
    assert torch.equal(four[6], torch.rot90(sq[0], 3, dims=(1, 2)))
    wide = torch.zeros(1, 1, 4, 6)
    assert turned(wide, 4).shape == (2, 1, 4, 6)  # 90 deg cannot keep (H, W): 180 deg only
    assert turned(sq, 1) is sq


def _spec(score: str, k: int = 3) -> ScorerSpec:
    return ScorerSpec(input_height_px=64, input_width_px=64, channels=1, max_value=255.0, stages=("stage3",),
                      neighbourhood_cells=1, projection_dim=None, projection_seed=0, blur_sigma_px=0.0,
                      image_score=score, score_top_k=k)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=("stage3",))


def test_search_matches_brute_force_with_a_big_bank(lite0: EfficientNetLite0) -> None:
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(5000, 40, generator=gen) * 3 + 7  # far from the origin: tests the centring
    scorer = AnomalyScorer(lite0, bank, _spec("patch_max"))
    feats = torch.randn(2, 40, 8, 8, generator=gen) * 3 + 7
    got = scorer.distances(feats).flatten(1)
    want = torch.cdist(feats.flatten(2).transpose(1, 2).double(), bank.double()).amin(2)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("score", "expect"), [("patch_max", 9.0), ("topk_mean", (9 + 5 + 4) / 3)])
def test_image_scores(lite0: EfficientNetLite0, score: str, expect: float) -> None:
    scorer = AnomalyScorer(lite0, torch.zeros(4, 40), _spec(score))
    patches = torch.ones(1, 1, 8, 8)
    patches[0, 0, 1, 1], patches[0, 0, 5, 2], patches[0, 0, 7, 7] = 9.0, 5.0, 4.0
    s, amap = scorer.score_patches(patches)
    assert s.item() == pytest.approx(expect) and amap.shape == (1, 1, 64, 64)


def test_map_max_is_the_blurred_map_maximum(lite0: EfficientNetLite0) -> None:
    spec = ScorerSpec(**{**_spec("map_max").to_dict(), "blur_sigma_px": 4.0})
    scorer = AnomalyScorer(lite0, torch.zeros(4, 40), spec)
    patches = torch.zeros(1, 1, 8, 8)
    patches[0, 0, 3, 3] = 9.0
    s, amap = scorer.score_patches(patches)
    assert s.item() == pytest.approx(amap.max().item()) and 0 < s.item() < 9.0  # a lone patch is smoothed


def test_fit_with_turns_and_fraction_builds_the_expected_bank(lite0: EfficientNetLite0) -> None:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (2, 1, 64, 64)).astype(np.float32) for _ in range(3)]
    cfg = AnomalyModelConfig(input_height_px=64, input_width_px=64, backbone=BackboneConfig(stages=("stage3",)),
                             bank_fraction=0.25, bank_turns=4, neighbourhood_cells=1)
    scorer = fit_anomaly_model(imgs, config=cfg, channels=1, max_value=255.0, backbone=lite0)
    assert scorer.bank_rows == math.ceil(0.25 * 6 * 4 * 8 * 8)  # 6 images x 4 turns x 8x8 patches


def test_train_config_maps_onto_the_model_config() -> None:
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=544, input_height=224)
    cfg = TrainConfig(backbone="efficientnet_lite2", stages=("stage3", "stage4"), bank_fraction=0.25,
                      image_score="topk_mean", score_top_k=5)
    m = anomaly_model_config(cfg, spec)
    assert (m.input_width_px, m.input_height_px, m.backbone.kind, m.backbone.stages) == (
        544, 224, "efficientnet_lite2", ("stage3", "stage4"))
    assert (m.bank_fraction, m.image_score, m.score_top_k, m.bank_turns) == (0.25, "topk_mean", 5, 1)


@pytest.mark.parametrize(("width", "copies"), [(224, 4), (544, 2)])
def test_a_profiles_turns_keep_the_banks_rows(tmp_path: Path, width: int, copies: int) -> None:
    """bank_turns auto + a rotate_90 camera profile, or an explicit bank_turns: the turns enter the bank at the
    share divided by the copies (four turns, 180 deg only on a non-square input), so the bank keeps its rows and
    the engine its cost."""
    from lineguard_models.anomaly import planned_bank_rows

    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=width, input_height=224)
    profile = tmp_path / "any_orientation.yaml"
    profile.write_text("sensor: mono\nbit_depth: 8\norientation_specific: false\nrotate_90: true\n")
    plain = anomaly_model_config(TrainConfig(), spec)
    turned = anomaly_model_config(TrainConfig(camera_profile=profile), spec)
    explicit = anomaly_model_config(TrainConfig(bank_turns=4), spec)
    assert (plain.bank_turns, turned.bank_turns, explicit.bank_turns) == (1, 4, 4)
    grid = (224 // 8, width // 8)
    for model in (turned, explicit):
        assert model.bank_fraction == pytest.approx(plain.bank_fraction / copies)
        assert planned_bank_rows(model, grid, 50) == planned_bank_rows(plain, grid, 50)


@pytest.mark.parametrize(("kind", "channels"), [("efficientnet_lite1", (40, 112)), ("efficientnet_lite2", (48, 120))])
def test_lite1_lite2_load_strictly(kind: str, channels: tuple[int, int]) -> None:
    bb = load_backbone(BackboneConfig(kind=kind, stages=("stage3", "stage5")))  # type: ignore[arg-type]
    out = bb(torch.zeros(1, 3, 64, 96))
    assert tuple(out["stage3"].shape) == (1, channels[0], 8, 12)
    assert tuple(out["stage5"].shape) == (1, channels[1], 4, 6)
    assert len(bb._blocks) == 21  # type: ignore[attr-defined]


def test_train_config_neighbourhood_reaches_the_model_and_must_be_odd() -> None:
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=64, input_height=64)
    assert anomaly_model_config(TrainConfig(), spec).neighbourhood_cells == 1  # the default: no averaging
    assert anomaly_model_config(TrainConfig(neighbourhood_cells=3), spec).neighbourhood_cells == 3
    with pytest.raises(ValueError, match="1, 3, 5 or 7"):
        TrainConfig(neighbourhood_cells=2)


def test_unaveraged_features_keep_a_small_defect_s_contrast(lite0: EfficientNetLite0) -> None:
    """A 3x3 px flaw covers part of one stage3 cell: 3x3 averaging dilutes it among its neighbours, so the
    flaw's distance over the good test image's shrinks (why the default is 1 cell, quality suite: deeppcb)."""
    rng = np.random.default_rng(3)

    def image() -> np.ndarray:
        return (128 + rng.normal(0, 6, (1, 1, 64, 64))).clip(0, 255).astype(np.float32)

    goods = [np.concatenate([image() for _ in range(4)]) for _ in range(3)]
    good_test, flawed = image(), image()
    flawed[0, 0, 30:33, 30:33] = 255.0
    contrast = {}
    for cells in (1, 3):
        cfg = AnomalyModelConfig(input_height_px=64, input_width_px=64, backbone=BackboneConfig(stages=("stage3",)),
                                 bank_fraction=1.0, neighbourhood_cells=cells, image_score="patch_max")
        scorer = fit_anomaly_model(goods, config=cfg, channels=1, max_value=255.0, backbone=lite0).eval()
        with torch.inference_mode():
            s_good, s_flaw = (scorer(torch.from_numpy(x))[0].item() for x in (good_test, flawed))
        contrast[cells] = s_flaw / s_good
    assert contrast[1] > 1.5 and contrast[1] > 1.3 * contrast[3], contrast
