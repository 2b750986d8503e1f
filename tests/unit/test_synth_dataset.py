"""Synthetic dataset generator: folder contract, pixel formats, determinism, visible defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.imageio import read_image
from lineguard_models.synth import DEFECT_KINDS, SynthConfig, _rng, render_image, render_surface, write_dataset


def test_flat_layout_counts_and_formats(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "d", SynthConfig(n_good=3, n_defect_per_class=2, channels=3))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(["good", *DEFECT_KINDS])
    assert ds.count("good") == 3 and all(ds.count(k) == 2 for k in DEFECT_KINDS)
    img = read_image(ds.files["good"][0])
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    # a colour dataset must be truly colour, not grey saved as RGB
    assert not np.array_equal(img[..., 0], img[..., 2])


def test_split_layout_16bit_mono_tiff_with_masks(tmp_path: Path) -> None:
    cfg = SynthConfig(
        n_good=2, n_test_good=1, n_defect_per_class=1, split=True, bit_depth=16, file_format="tiff", masks=True
    )
    ds = write_dataset(tmp_path / "d", cfg)
    assert (tmp_path / "d/train/good").is_dir() and (tmp_path / "d/test/good").is_dir()
    assert (tmp_path / "d/masks/pit").is_dir()
    img = read_image(ds.files["pit"][0])
    assert img.ndim == 2 and img.dtype == np.uint16 and img.max() > 255


def test_deterministic_and_independent_of_counts(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", SynthConfig(n_good=2, n_defect_per_class=1, seed=7))
    b = write_dataset(tmp_path / "b", SynthConfig(n_good=4, n_defect_per_class=3, seed=7))
    c = write_dataset(tmp_path / "c", SynthConfig(n_good=2, n_defect_per_class=1, seed=8))
    assert a.files["good"][1].read_bytes() == b.files["good"][1].read_bytes()
    assert a.files["crack"][0].read_bytes() == b.files["crack"][0].read_bytes()
    assert a.files["good"][0].read_bytes() != c.files["good"][0].read_bytes()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("texture", ["brushed", "cast"])
def test_defects_change_pixels_inside_their_mask(kind: str, texture: str) -> None:
    cfg = SynthConfig(texture=texture)  # type: ignore[arg-type]
    defect, mask = render_image(cfg, kind, 0)
    # the defect is painted on the surface rendered first from the same rng stream
    surface = render_surface(_rng(cfg.seed, kind, 0), cfg)
    change = np.abs(defect - surface)
    inside = mask > 0.3
    assert inside.sum() >= 3
    assert change[inside].mean() > 0.08  # visible: > 20 grey levels of 255 on average
    assert change[~inside].mean() < 0.2 * change[inside].mean()


def test_invalid_configs_refused() -> None:
    with pytest.raises(ValueError, match="JPEG"):
        SynthConfig(bit_depth=16, file_format="jpg")
    with pytest.raises(ValueError, match="unknown defect"):
        SynthConfig(defect_classes=("dent",))


def test_refuses_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("hi")
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path, SynthConfig(n_good=1, n_defect_per_class=0))
