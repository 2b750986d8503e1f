"""The recipes automatic configuration tries: each is one valid change of the base recipe."""

from __future__ import annotations

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
