"""``fit_only.txt``: good training images that fit the model and never calibrate (data.FIT_ONLY_FILE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard.errors import DatasetError
from lineguard_models.data import FIT_ONLY_FILE, scan_dataset
from lineguard_models.synth import SynthConfig, write_dataset


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "d", SynthConfig(width_px=48, height_px=40, n_good=6, n_defect_per_class=2,
                                              defect_classes=("pit",), seed=5))
    return tmp_path / "d"


def test_listed_goods_are_read_with_comments_and_blank_lines(data: Path) -> None:
    before = scan_dataset(data)
    goods = sorted(s.rel for s in before.good())
    (data / FIT_ONLY_FILE).write_text(f"# chosen for their score\n\n{goods[0]}\n  {goods[3]}  \n", encoding="utf-8")
    ds = scan_dataset(data)
    assert ds.fit_only == {goods[0], goods[3]}
    assert ds.fingerprint != before.fingerprint  # the list is part of what a bundle was trained on
    assert len(ds.samples) == len(before.samples)  # the list is not an image


@pytest.mark.parametrize("entry", ["good/missing.png", "pit/{pit}"])
def test_an_entry_that_is_not_a_good_training_image_is_refused(data: Path, entry: str) -> None:
    pit = next(s.rel for s in scan_dataset(data).defects()).split("/")[-1]
    (data / FIT_ONLY_FILE).write_text(entry.format(pit=pit) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="not good training images"):
        scan_dataset(data)


def test_an_unreadable_list_is_refused(data: Path) -> None:
    (data / FIT_ONLY_FILE).write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="cannot read"):
        scan_dataset(data)


def test_hold_out_that_leaves_nothing_to_fit_is_refused_unless_listed_goods_fit(data: Path) -> None:
    from lineguard_models.pipeline import TrainConfig, split_good

    cfg = TrainConfig(min_holdout=6)  # all 6 good images would be held out
    with pytest.raises(DatasetError, match="leaves none to train on"):
        split_good(scan_dataset(data), cfg)
    listed = sorted(s.rel for s in scan_dataset(data).good())[:2]
    (data / FIT_ONLY_FILE).write_text("\n".join(listed) + "\n", encoding="utf-8")
    fitted, held = split_good(scan_dataset(data), cfg)
    assert sorted(s.rel for s in fitted) == listed and len(held) == 4  # the other 4, all held out
