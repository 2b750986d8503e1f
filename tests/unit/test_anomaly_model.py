"""Anomaly model: fitting on good images only, bounded memory, determinism, scoring contract.

Images are generated textures (a smoothed noise surface, like brushed or cast metal) with rendered
defects, in raw 12-bit mono units, so the input contract (raw units, mono, max_value) is exercised.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lineguard.errors import ImageError
from lineguard_models.anomaly import (
    AnomalyModelConfig,
    AnomalyScorer,
    FitProgress,
    batched,
    fit_anomaly_model,
    score_batches,
)
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.coreset import StreamingCoreset, greedy_kcenter

H, W = 96, 128  # non-square on purpose
MAX = 4095.0


def texture(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """A good part: smooth random surface with fine grain, mid grey, in 12-bit units, [1, h, w]."""
    coarse = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1)
    img = 2000 + 2500 * coarse + 150 * fine
    return np.clip(img, 0, MAX)[None].astype(np.float32)


def scratch(img: np.ndarray, y: int, x: int) -> np.ndarray:
    out = img.copy()
    cv2.line(out[0], (x, y), (x + 14, y + 6), color=float(MAX), thickness=2)
    return out


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=("stage3", "stage4"))


@pytest.fixture(scope="module")
def config() -> AnomalyModelConfig:
    return AnomalyModelConfig(input_height_px=H, input_width_px=W, bank_size=64, buffer_rows=400, seed=3)


@pytest.fixture(scope="module")
def scorer(backbone: EfficientNetLite0, config: AnomalyModelConfig) -> AnomalyScorer:
    rng = np.random.default_rng(0)
    good = [texture(rng) for _ in range(12)]
    return fit_anomaly_model(batched(good, 4), config=config, channels=1, max_value=MAX, backbone=backbone)


def test_scratch_scores_above_every_good_part_and_is_localised(scorer: AnomalyScorer) -> None:
    rng = np.random.default_rng(1)
    good = [texture(rng) for _ in range(6)]
    bad = [scratch(texture(rng), y=30 + 8 * i, x=40 + 10 * i) for i in range(4)]
    scores, maps = score_batches(scorer, batched(good + bad, 5))
    assert scores.shape == (10,) and maps.shape == (10, 1, H, W)
    assert scores[6:].min() > scores[:6].max()
    for i in range(4):
        y, x = np.unravel_index(np.argmax(maps[6 + i, 0]), (H, W))
        assert abs(y - (33 + 8 * i)) <= 12 and abs(x - (47 + 10 * i)) <= 12  # peak at the scratch


def test_fit_is_deterministic_by_seed(backbone: EfficientNetLite0, config: AnomalyModelConfig) -> None:
    def fit(seed: int) -> torch.Tensor:
        rng = np.random.default_rng(0)
        cfg = config.model_copy(update={"seed": seed, "patches_per_image": 50})
        good = [texture(rng) for _ in range(6)]
        return fit_anomaly_model(batched(good, 3), config=cfg, channels=1, max_value=MAX, backbone=backbone).bank

    first, again, other = fit(7), fit(7), fit(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_mono_raw_units_match_rgb_8bit(scorer: AnomalyScorer, backbone: EfficientNetLite0) -> None:
    """x in 12-bit mono == the same picture as 8-bit RGB, with the same bank: scaling is in the graph."""
    spec8 = scorer.spec.__class__(**{**scorer.spec.to_dict(), "channels": 3, "max_value": 255.0})
    rgb_scorer = AnomalyScorer(backbone, scorer.bank, spec8).eval()
    mono = texture(np.random.default_rng(5))[None]
    rgb = np.repeat(mono * (255.0 / MAX), 3, axis=1)
    s1, m1 = score_batches(scorer, [mono])
    s3, m3 = score_batches(rgb_scorer, [rgb])
    np.testing.assert_allclose(s1, s3, rtol=1e-4)
    np.testing.assert_allclose(m1, m3, rtol=1e-4, atol=1e-3)


def test_progress_is_reported_per_batch(backbone: EfficientNetLite0, config: AnomalyModelConfig) -> None:
    reports: list[FitProgress] = []
    rng = np.random.default_rng(0)
    good = [texture(rng) for _ in range(5)]
    fit_anomaly_model(batched(good, 2), config=config, channels=1, max_value=MAX, backbone=backbone,
                      images_total=5, progress=reports.append)
    assert [r.images_seen for r in reports] == [2, 4, 5]
    assert reports[-1].images_total == 5 and reports[-1].feature_rows_seen == 5 * 12 * 16


def test_wrong_batch_shape_is_refused(backbone: EfficientNetLite0, config: AnomalyModelConfig) -> None:
    rgb = np.zeros((2, 3, H, W), np.float32)  # model configured for mono
    with pytest.raises(ImageError, match="expected"):
        fit_anomaly_model([rgb], config=config, channels=1, max_value=MAX, backbone=backbone)


def test_coreset_memory_is_bounded_whatever_the_image_count() -> None:
    gen = torch.Generator().manual_seed(0)
    cs = StreamingCoreset(bank_size=50, buffer_rows=300, seed=0)
    for _ in range(200):  # 200 "images" of 100 patches
        cs.add(torch.randn(100, 16, generator=gen))
    assert cs.rows_seen == 20_000
    assert cs.peak_rows <= 50 + 300 + 100 - 1
    assert cs.bank().shape == (50, 16)


def test_kcenter_keeps_rare_patterns() -> None:
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(2000, 8, generator=gen) * 0.1
    rare = torch.full((3, 8), 5.0) + torch.arange(3.0)[:, None]
    picked = greedy_kcenter(torch.cat([common, rare]), 20, generator=gen)
    assert {2000, 2001, 2002} <= set(picked.tolist())
    assert len(set(picked.tolist())) == 20


def test_config_rejects_even_neighbourhood() -> None:
    with pytest.raises(ValueError, match="odd"):
        AnomalyModelConfig(neighbourhood_cells=2)
