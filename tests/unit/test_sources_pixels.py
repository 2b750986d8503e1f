"""Pixel-format conversion of camera buffers (lineguard.sources.pixels): pure numpy/OpenCV."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.errors import ImageError
from lineguard.sources import pixels


def _mosaic(pattern: str, rgb: tuple[int, int, int], h: int = 8, w: int = 8, dtype: type = np.uint8) -> np.ndarray:
    """Paint a uniform colour into a PFNC Bayer mosaic: ``pattern`` names the top-left 2x2 cell."""
    value = dict(zip("RGB", rgb, strict=True))
    m = np.zeros((h, w), dtype)
    # The second row of a Bayer cell: opposite of the first row (RG/GB, GR/BG).
    second = {"RG": "GB", "GR": "BG", "GB": "RG", "BG": "GR"}[pattern]
    cells = {(0, 0): pattern[0], (0, 1): pattern[1], (1, 0): second[0], (1, 1): second[1]}
    for (dy, dx), colour in cells.items():
        m[dy::2, dx::2] = value[colour]
    return m


@pytest.mark.parametrize("pattern", ["RG", "GR", "GB", "BG"])
@pytest.mark.parametrize("bits", [8, 12])
def test_bayer_demosaic_gives_rgb_order(pattern: str, bits: int) -> None:
    dtype = np.uint8 if bits == 8 else np.uint16
    colour = (200, 60, 10) if bits == 8 else (4000, 1000, 100)
    raw = _mosaic(pattern, colour, dtype=dtype).ravel()
    out = pixels.to_image(raw, f"Bayer{pattern}{bits}", 8, 8)
    assert out.shape == (8, 8, 3)
    assert out.dtype == dtype
    # Interior pixels (borders are extrapolated) must carry the painted colour in RGB order.
    np.testing.assert_allclose(out[2:6, 2:6].reshape(-1, 3).mean(0), colour, rtol=0.02)


def test_mono_formats_keep_values_and_report_max() -> None:
    raw8 = np.arange(12, dtype=np.uint8)
    img = pixels.to_image(raw8, "Mono8", 4, 3)
    assert img.shape == (3, 4) and img.dtype == np.uint8
    assert img[2, 3] == 11
    raw12 = np.array([0, 4095, 17, 2048], dtype=np.uint16)
    img12 = pixels.to_image(raw12, "Mono12", 2, 2)
    assert img12.dtype == np.uint16 and img12.max() == 4095  # never rescaled
    assert pixels.max_value("Mono8") == 255
    assert pixels.max_value("Mono10") == 1023
    assert pixels.max_value("Mono12") == 4095
    assert pixels.max_value("BayerRG12") == 4095


@pytest.mark.parametrize(
    ("fmt", "channels_in", "order"),
    [("RGB8", 3, (0, 1, 2)), ("BGR8", 3, (2, 1, 0)), ("RGBa8", 4, (0, 1, 2)), ("BGRa8", 4, (2, 1, 0))],
)
def test_colour_formats_come_out_rgb(fmt: str, channels_in: int, order: tuple[int, int, int]) -> None:
    px = np.zeros((2, 3, channels_in), np.uint8)
    px[..., order[0]] = 10  # red in the buffer's own order
    px[..., order[1]] = 20
    px[..., order[2]] = 30
    if channels_in == 4:
        px[..., 3] = 255  # alpha must be dropped
    out = pixels.to_image(px.ravel(), fmt, 3, 2)
    assert out.shape == (2, 3, 3)
    assert tuple(out[1, 2]) == (10, 20, 30)


def test_row_padding_is_cut_off() -> None:
    rows = np.array([[1, 2, 3, 0xEE], [4, 5, 6, 0xEE]], np.uint8)  # width 3 + 1 padding byte
    out = pixels.to_image(rows.ravel(), "Mono8", 3, 2)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 6]])


def test_result_owns_its_memory() -> None:
    """The camera buffer is queued back right after conversion: the image must not view it."""
    for fmt, raw in [
        ("Mono8", np.zeros(16, np.uint8)),
        ("Mono12", np.zeros(16, np.uint16)),
        ("RGB8", np.zeros(48, np.uint8)),
        ("BayerRG8", np.zeros(16, np.uint8)),
    ]:
        out = pixels.to_image(raw, fmt, 4, 4)
        assert not np.shares_memory(out, raw), fmt
        assert out.flags.c_contiguous


def test_short_buffer_and_wrong_dtype_and_unknown_format_are_image_errors() -> None:
    with pytest.raises(ImageError, match="needs 16"):
        pixels.to_image(np.zeros(10, np.uint8), "Mono8", 4, 4)
    with pytest.raises(ImageError, match="expected uint16"):
        pixels.to_image(np.zeros(16, np.uint8), "Mono12", 4, 4)
    with pytest.raises(ImageError, match="not supported"):
        pixels.to_image(np.zeros(16, np.uint8), "YCbCr422_8", 4, 4)
