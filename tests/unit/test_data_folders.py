"""Dataset folder scanning: layouts, pixel formats, and every bad input named with its path."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.errors import DatasetError
from lineguard_models.data import scan_dataset
from lineguard_models.synth import SynthConfig, write_dataset


def _make(tmp_path: Path, **kw: object) -> Path:
    root = tmp_path / "ds"
    write_dataset(root, SynthConfig(n_good=4, n_defect_per_class=2, defect_classes=("pit", "crack"), **kw))  # type: ignore[arg-type]
    return root


def test_flat_layout_and_fingerprint(tmp_path: Path) -> None:
    root = _make(tmp_path)
    (root / "manifest.csv").write_text("path,label\n")
    ds = scan_dataset(root)
    assert ds.channels == 1 and ds.dtype == "uint8" and not ds.mono_from_rgb
    assert ds.defect_classes == ("crack", "pit")
    assert len(ds.good()) == 4 and len(ds.defects("pit")) == 2
    assert ds.sizes == ((128, 96),)
    fp = ds.fingerprint
    assert scan_dataset(root).fingerprint == fp  # stable
    shutil.copytree(root, tmp_path / "copy")
    assert scan_dataset(tmp_path / "copy").fingerprint == fp  # independent of where it lives
    img = cv2.imread(str(ds.good()[0].path))
    img[0, 0] ^= 1  # one changed pixel bit
    cv2.imwrite(str(ds.good()[0].path), img[:, :, 0])
    assert scan_dataset(root).fingerprint != fp


def test_split_layout_16bit_with_masks_ignored(tmp_path: Path) -> None:
    root = _make(tmp_path, split=True, bit_depth=16, masks=True, channels=3)
    ds = scan_dataset(root)
    assert ds.channels == 3 and ds.dtype == "uint16"
    assert {s.split for s in ds.good()} == {"train", "test"}
    assert "masks" not in ds.defect_classes
    assert ds.load(ds.defects("pit")[0]).dtype == np.uint16


def test_grey_saved_as_rgb_is_mono(tmp_path: Path) -> None:
    root = _make(tmp_path, file_format="jpg")
    for p in root.rglob("*.jpg"):  # what many tools do with a mono camera's images
        grey = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(p), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    ds = scan_dataset(root)
    assert ds.channels == 1 and ds.mono_from_rgb
    assert any("treated as mono" in w for w in ds.warnings)
    assert ds.load(ds.good()[0]).ndim == 2


def test_unreadable_and_empty_files_are_listed(tmp_path: Path) -> None:
    root = _make(tmp_path)
    (root / "good" / "empty.png").write_bytes(b"")
    (root / "pit" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError) as err:
        scan_dataset(root)
    msg = str(err.value)
    assert "good/empty.png (empty file)" in msg and "pit/broken.png" in msg and "--skip-unreadable" in msg
    ds = scan_dataset(root, allow_unreadable=True)
    assert sorted(b.rel for b in ds.skipped) == ["good/empty.png", "pit/broken.png"]
    assert len(ds.good()) == 4
    assert ds.summary()["skipped"][0]["file"] == "good/empty.png"


def test_no_good_folder(tmp_path: Path) -> None:
    root = _make(tmp_path)
    shutil.rmtree(root / "good")
    with pytest.raises(DatasetError, match=r"no 'good' folder \(found \['crack', 'pit'\]\)"):
        scan_dataset(root)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nowhere")


def test_empty_good_folder_refused_and_empty_defect_folder_warned(tmp_path: Path) -> None:
    root = _make(tmp_path)
    (root / "dent").mkdir()
    ds = scan_dataset(root)
    assert "dent" not in ds.defect_classes
    assert any("dent/ is empty" in w for w in ds.warnings)
    for p in (root / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="good/ holds no images"):
        scan_dataset(root)


def test_mixed_mono_and_colour_refused(tmp_path: Path) -> None:
    root = _make(tmp_path)
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[..., 2] = 200  # truly colour
    cv2.imwrite(str(root / "good" / "colour.png"), rgb)
    with pytest.raises(DatasetError, match=r"mix mono \(8, e.g. .*\) and colour \(1, e.g. good/colour.png\)"):
        scan_dataset(root)


def test_mixed_bit_depth_refused(tmp_path: Path) -> None:
    root = _make(tmp_path)
    cv2.imwrite(str(root / "good" / "deep.png"), np.zeros((96, 128), np.uint16))
    with pytest.raises(DatasetError, match="mix bit depths"):
        scan_dataset(root)


def test_mixed_layout_refused(tmp_path: Path) -> None:
    root = _make(tmp_path)
    (root / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="mixes the split layout"):
        scan_dataset(root)


def test_the_input_spec_of_16_bit_images_reads_them_once_for_every_recipe(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import lineguard_models.data as data
    from lineguard_models.pipeline import TrainConfig, make_input_spec

    root = _make(tmp_path, bit_depth=16)
    ds = scan_dataset(root)
    assert ds.dtype == "uint16"
    reads: list[Path] = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda path, **kw: reads.append(path) or real(path, **kw))
    train = ds.good()
    specs = [make_input_spec(ds, train, TrainConfig(input_size_px=px)) for px in (224, 288, 352)]
    assert len({s.max_value for s in specs}) == 1 and specs[0].max_value in (1023, 4095, 16383, 65535)
    assert sorted(reads) == sorted(s.path for s in train)  # each training image read once, not once per recipe
    assert [s.input_width for s in specs] == sorted({s.input_width for s in specs})
