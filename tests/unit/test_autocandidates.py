"""The recipes automatic configuration tries: each is one valid change of the base recipe."""

from __future__ import annotations

import pytest

from lineguard_models.autocandidates import default_candidates, lean_candidate
from lineguard_models.pipeline import TrainConfig


def test_default_candidates_are_valid_single_changes_of_the_default() -> None:
    base = TrainConfig()
    cands = default_candidates(base, (300, 300))
    names = [c.name for c in cands]
    assert names[0] == "default" and cands[0].updates == {}
    assert len(set(names)) == len(names)
    assert "avg3" in names and "stage3_352px" in names and "lite0" in names and "tiles2x2" not in names
    for c in cands[1:]:
        cfg = TrainConfig.model_validate({**base.model_dump(), **c.updates})
        assert cfg != base, c.name  # every candidate changes the recipe
    fine = next(c for c in cands if c.name == "stage3_352px")
    assert fine.updates == {"stages": ("stage3",), "input_size_px": base.input_size_px + 64}


def test_candidates_follow_the_base_recipe() -> None:
    # a base that already averages and has one stage gets neither of those candidates again
    base = TrainConfig(neighbourhood_cells=3, stages=("stage3",), input_size_px=224, backbone="efficientnet_lite0")
    names = [c.name for c in default_candidates(base, (2000, 700))]
    assert "avg3" not in names and "lite0" not in names and "lite2" in names
    assert "288px" in names and "tiles2x2" in names


def test_lean_candidate_scales_the_side_by_the_square_root_of_the_overrun() -> None:
    c = lean_candidate(TrainConfig(input_size_px=288), p50_ms=80.0, budget_ms=40.0)
    # r = 0.85 * 40 / 80 = 0.425 -> 288 * sqrt(0.425) = 187.7 -> 160 (multiple of 32, rounded down)
    assert c.updates == {"input_size_px": 160} and c.name == "lean160px"
    assert lean_candidate(TrainConfig(input_size_px=288), p50_ms=30.0, budget_ms=40.0).updates == {"input_size_px": 256}


def test_largest_side_steps_to_the_biggest_input_priced_within_the_limit() -> None:
    from lineguard_models.autoprice import largest_side

    calls: list[int] = []

    def price(side: int) -> float:  # an engine that grows with the pixels
        calls.append(side)
        return 10.0 * (side / 100.0) ** 2

    assert largest_side(price, 128, 288, 34.0) == 160  # 160 px 25.6 ms, 192 px 36.9 ms > 34
    assert largest_side(price, 224, 288, 34.0) == 160  # down from an estimate that was too large
    assert largest_side(price, 96, 288, 34.0, steps=1) == 128  # at most `steps` moves
    assert largest_side(price, 256, 288, 1000.0) == 256  # never at or above the default's own side
    assert all(s % 32 == 0 for s in calls)


def test_rebased_candidates_try_every_recipe_at_the_lean_side() -> None:
    from lineguard_models.autoprice import rebased_candidates

    cands = rebased_candidates(TrainConfig(), (704, 288), 160, 120.8, 40.0)
    names = [c.name for c in cands]
    assert names[:2] == ["default", "lean160px"] and cands[0].updates == {}
    assert "over the 40 ms latency budget: 160 px" in cands[1].why and "120.8 ms" in cands[1].why
    assert {"avg3", "stage3_224px", "lite0", "tiles2x2"} <= set(names)
    for c in cands[1:]:
        assert c.updates["input_size_px"] == (224 if c.name == "stage3_224px" else 160)
    assert next(c for c in cands if c.name == "avg3").updates == {"input_size_px": 160, "neighbourhood_cells": 3}


def test_turned_bank_candidate_keeps_the_defaults_bank_rows() -> None:
    """Every good enters the bank in 4 orientations (2 on a non-square input), and the bank keeps the default's
    rows (``pipeline.anomaly_model_config``), so the engine keeps the default's cost."""
    from lineguard.preprocess import InputSpec
    from lineguard_models.anomaly import planned_bank_rows
    from lineguard_models.pipeline import anomaly_model_config, input_size_for_side

    for size, copies in (((300, 300), 4), ((704, 288), 2)):
        base = TrainConfig()
        turns = next(c for c in default_candidates(base, size) if c.name == "turns4")
        assert turns.updates == {"bank_turns": 4}
        rows, fractions = [], []
        for cfg in (base, TrainConfig.model_validate({**base.model_dump(), **turns.updates})):
            w, h = input_size_for_side(*size, cfg.input_size_px, cfg.input_side)
            spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=w, input_height=h)
            model = anomaly_model_config(cfg, spec)
            fractions.append(model.bank_fraction)
            rows.append(planned_bank_rows(model, (h // 8, w // 8), 50))
        assert rows[0] == rows[1] > 0, size
        assert fractions[1] == pytest.approx(fractions[0] / copies)
    # a fixed row count stays as it is
    fixed = TrainConfig(bank_fraction=None, bank_size=4000, bank_turns=4)
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=288, input_height=288)
    assert planned_bank_rows(anomaly_model_config(fixed, spec), (36, 36), 50) == 4000
