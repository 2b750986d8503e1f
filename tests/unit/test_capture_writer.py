"""TeachSetWriter (lineguard capture's file side): numbering, no overwrite, format check, layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.capture import CaptureError, TeachSetWriter, format_of
from lineguard.imageio import encode_png, read_image

IMG = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)


def test_numbers_on_after_the_highest_file_and_never_overwrites(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "000041.png").write_bytes(encode_png(IMG))
    (good / "vendor_tool_0001.png").write_bytes(encode_png(IMG))  # not ours: kept, not counted
    (good / ".000042.png.partial").write_bytes(b"half")  # a capture killed mid-write
    w = TeachSetWriter(tmp_path, "good", fsync=False)
    assert not (good / ".000042.png.partial").exists()
    assert w.write(IMG, {}).name == "000042.png"
    (good / "000043.png").write_bytes(b"written by another capture meanwhile")
    assert w.write(IMG + 1, {}).name == "000044.png"
    assert (good / "000043.png").read_bytes() == b"written by another capture meanwhile"
    assert np.array_equal(read_image(good / "000044.png"), IMG + 1)  # 16 bit kept
    assert not list(good.glob(".*"))


def test_format_check_names_what_changed(tmp_path: Path) -> None:
    w = TeachSetWriter(tmp_path, "good", fsync=False)
    w.check_format(format_of(IMG, max_value=4095))  # empty dataset: anything goes
    w.write(IMG, {"image": {"max_value": 4095, "pixel_format": "Mono12"}})
    w.check_format(format_of(IMG, max_value=4095, pixel_format="Mono12"))
    with pytest.raises(CaptureError, match=r"max_value, pixel_format differ"):
        TeachSetWriter(tmp_path, "scratch", fsync=False).check_format(format_of(IMG, max_value=1023,
                                                                                pixel_format="Mono10"))
    with pytest.raises(CaptureError, match=r"64x48 mono uint16.*64x48 mono uint8 .*dtype differ"):
        w.check_format(format_of(IMG.astype(np.uint8)))


def test_refuses_the_split_layout_and_reserved_names(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="not a usable class folder name"):
        TeachSetWriter(tmp_path, "masks")
    (tmp_path / "train").mkdir()
    with pytest.raises(CaptureError, match=r"split layout.*capture into"):
        TeachSetWriter(tmp_path, "good")


def test_space_check_counts_every_frame_and_the_reserve(tmp_path: Path) -> None:
    w = TeachSetWriter(tmp_path, "good", fsync=False)
    w.check_space(IMG.nbytes, 1, 0)
    with pytest.raises(CaptureError, match="not enough free disk space"):
        w.check_space(IMG.nbytes, 10, w.free_bytes())
