"""`lineguard train` option handling: automatic configuration is the default; any recipe option or
--no-auto keeps manual control, and recipe options reach TrainConfig."""

from __future__ import annotations

import argparse

import pytest

from lineguard_models.commands import train as cmd


def _parse(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(["--data", "d", "--out", "o", *extra])


def test_auto_is_the_default() -> None:
    args = _parse()
    assert cmd.auto_mode(args) and cmd.recipe_updates(args) == {}
    assert args.latency_budget_ms == 40.0 and args.auto_time_budget_s == 600.0


@pytest.mark.parametrize("extra", [["--no-auto"], ["--input-size", "320"], ["--tiles", "2x2"], ["--bank-size", "99"],
                                   ["--input-side", "long"], ["--bank-turns", "4"], ["--image-score", "topk_mean"],
                                   ["--stages", "stage3,stage4"], ["--backbone", "efficientnet_lite1"],
                                   ["--bank-fraction", "1.0"]])
def test_a_recipe_option_or_no_auto_turns_auto_off(extra: list[str]) -> None:
    assert not cmd.auto_mode(_parse(*extra))


def test_recipe_options_reach_the_config() -> None:
    upd = cmd.recipe_updates(_parse("--input-size", "320", "--tiles", "2x3", "--stages", "stage3, stage4",
                                    "--bank-turns", "4", "--image-score", "topk_mean"))
    assert upd == {"input_size_px": 320, "tile_rows": 2, "tile_cols": 3, "stages": ("stage3", "stage4"),
                   "bank_turns": 4, "image_score": "topk_mean"}
