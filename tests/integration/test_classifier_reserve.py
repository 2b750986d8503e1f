"""What automatic configuration keeps of a flagged part's budget for the classifier, measured on this CPU.

``classifier_bundle.classifier_reserve_ms`` on generated lines: every candidate stage set of the per-line
choice is exported and timed in ONNX Runtime; the reserve is the edge's preprocessing plus the costliest, so
whichever candidate the choice later picks fits beside an anomaly engine at auto's reduced budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard_models.classifier import ClassifierConfig
from lineguard_models.classifier_bundle import classifier_reserve_ms
from lineguard_models.classifier_select import PREPROCESS_MS, estimated_p50_ms, line_candidates
from lineguard_models.data import scan_dataset
from lineguard_models.pipeline import TrainConfig, make_input_spec
from lineguard_models.synth import SynthConfig, write_dataset


def _line(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    write_dataset(root, SynthConfig(n_good=6, n_defect_per_class=per_class, defect_classes=classes, seed=3))
    return root


@pytest.mark.parametrize("tiles", [1, 2])
def test_the_reserve_is_preprocessing_plus_the_costliest_candidate_measured_here(tmp_path: Path, tiles: int) -> None:
    ds = scan_dataset(_line(tmp_path / "d", ("scratch", "pit"), 5))
    spec = make_input_spec(ds, [], TrainConfig(input_size_px=64, tile_cols=tiles))
    reserve, prices = classifier_reserve_ms(ds, spec, runs=3)
    stage_sets = {c.stages for c in line_candidates(("stage5", "stage6"), 1, free_views=True)}
    assert set(prices) == {"+".join(s) for s in stage_sets} and all(p > 0 for p in prices.values())
    assert reserve == pytest.approx(PREPROCESS_MS + max(prices.values()))
    engine = 40.0 - reserve  # an anomaly engine at auto's reduced budget: every candidate's flagged part fits
    flagged = [estimated_p50_ms(s, engine, prices) for s in stage_sets]
    assert max(flagged) == pytest.approx(40.0) and all(f <= 40.0 + 1e-9 for f in flagged)


def test_a_fixed_recipe_prices_its_own_stages_only(tmp_path: Path) -> None:
    ds = scan_dataset(_line(tmp_path / "d", ("scratch", "pit"), 5))
    spec = make_input_spec(ds, [], TrainConfig(input_size_px=64))
    _, prices = classifier_reserve_ms(ds, spec, ClassifierConfig(select=False), runs=3)
    assert list(prices) == ["stage5+stage6"]


@pytest.mark.parametrize(("classes", "per_class"), [(("scratch",), 6), (("scratch", "pit"), 4)])
def test_no_reserve_where_lineguard_train_trains_no_classifier(tmp_path: Path, classes: tuple[str, ...],
                                                              per_class: int) -> None:
    ds = scan_dataset(_line(tmp_path / "d", classes, per_class))  # one class, or a class below 5 images
    assert classifier_reserve_ms(ds, make_input_spec(ds, [], TrainConfig(input_size_px=64))) == (0.0, {})
