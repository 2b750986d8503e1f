"""Preprocessing shared by training and the edge: camera image -> engine input batch.

Sits between the source (``Frame.image``) and the engines. The spec travels inside the bundle
(``manifest.json`` -> ``input``), so the edge never guesses: a frame whose pixel format or size
does not match the spec is refused with an :class:`ImageError` (the service then issues its
fail-safe verdict). Scaling to [0, 1], mono -> 3-channel replication and the backbone's
normalisation happen *inside* the ONNX graph; this module only does geometry (tiles, keep-aspect
letterbox) and layout (HxW[xC] -> NCHW float32 in raw camera units).

Must never: rescale intensities, convert colour spaces, or accept a frame it cannot prove matches
the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lineguard.errors import ImageError

FitMode = Literal["letterbox", "stretch"]


class TileSpec(BaseModel):
    """Split the image into rows x cols overlapping tiles, each scored at the model input size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(1, ge=1, le=16, description="tile rows")
    cols: int = Field(1, ge=1, le=16, description="tile columns")
    overlap_px: int = Field(0, ge=0, le=4096, description="overlap between neighbouring tiles, image pixels")

    @property
    def count(self) -> int:
        return self.rows * self.cols


class InputSpec(BaseModel):
    """What the camera delivers and how it becomes the engine input. Stored in the bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: Literal[1, 3] = Field(description="1 = mono camera, 3 = RGB (channel order R, G, B)")
    dtype: Literal["uint8", "uint16"] = Field(description="pixel container type delivered by the source")
    max_value: int = Field(ge=1, le=65535, description="full-scale pixel value (255, 1023, 4095, 65535)")
    image_width: int | None = Field(
        None, ge=8, le=65535, description="expected frame width in px; None accepts any size"
    )
    image_height: int | None = Field(
        None, ge=8, le=65535, description="expected frame height in px; None accepts any size"
    )
    input_width: int = Field(ge=32, le=4096, description="engine input width in px (per tile)")
    input_height: int = Field(ge=32, le=4096, description="engine input height in px (per tile)")
    fit: FitMode = Field("letterbox", description="letterbox keeps the aspect ratio; stretch squashes")
    pad_value: int = Field(0, ge=0, le=65535, description="letterbox padding value, raw units")
    tiles: TileSpec = Field(default_factory=lambda: TileSpec(),  description="tiling for small defects on big images")

    @model_validator(mode="after")
    def verify_max_value(self) -> InputSpec:
        if self.dtype == "uint8" and self.max_value > 255:
            raise ValueError(f"max_value {self.max_value} does not fit dtype uint8")
        if self.pad_value > self.max_value:
            raise ValueError("pad_value exceeds max_value")
        if (self.image_width is None) != (self.image_height is None):
            raise ValueError("set both image_width and image_height, or neither")
        return self


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one tile's model input came from, to map anomaly maps back to the image."""

    x0: int
    y0: int
    width: int  # source region size, image px
    height: int
    scale: float  # model px per image px
    pad_x: int  # letterbox offset inside the model input, model px
    pad_y: int


def check_image(image: npt.NDArray[Any], spec: InputSpec) -> None:
    """Raise :class:`ImageError` unless ``image`` has the spec's pixel format and size."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"frame is {type(image).__name__}, expected a numpy array")
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else -1)
    if image.ndim == 3 and channels == 1:
        channels = 1
    if channels != spec.channels:
        kind = {1: "mono", 3: "RGB"}.get(channels, f"{image.ndim}-D/{channels}-channel")
        want = "mono" if spec.channels == 1 else "RGB"
        raise ImageError(f"frame is {kind} but the bundle expects {want}: check the camera pixel format")
    if image.dtype != np.dtype(spec.dtype):
        raise ImageError(f"frame dtype {image.dtype} but the bundle expects {spec.dtype}")
    if spec.image_width is not None and (image.shape[1], image.shape[0]) != (
        spec.image_width,
        spec.image_height,
    ):
        raise ImageError(
            f"frame is {image.shape[1]}x{image.shape[0]} px but the bundle expects "
            f"{spec.image_width}x{spec.image_height}: check camera ROI / binning"
        )
    if image.size == 0:
        raise ImageError("frame is empty")


def tile_regions(width: int, height: int, tiles: TileSpec) -> list[tuple[int, int, int, int]]:
    """(x0, y0, w, h) of each tile, row-major, covering the image with the given overlap."""
    regions = []
    ov = tiles.overlap_px
    tw = (width + ov * (tiles.cols - 1)) // tiles.cols
    th = (height + ov * (tiles.rows - 1)) // tiles.rows
    if tw < 8 or th < 8:
        raise ImageError(f"image {width}x{height} too small for {tiles.rows}x{tiles.cols} tiles")
    for r in range(tiles.rows):
        y0 = height - th if r == tiles.rows - 1 else r * (th - ov)
        for c in range(tiles.cols):
            x0 = width - tw if c == tiles.cols - 1 else c * (tw - ov)
            regions.append((x0, y0, tw, th))
    return regions


def _fit(region: npt.NDArray[Any], spec: InputSpec) -> tuple[npt.NDArray[np.float32], Placement]:
    h, w = region.shape[:2]
    out_w, out_h = spec.input_width, spec.input_height
    if spec.fit == "stretch":
        resized = cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)
        return resized.astype(np.float32), Placement(0, 0, w, h, out_w / w, 0, 0)
    scale = min(out_w / w, out_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(region, (new_w, new_h), interpolation=interp)
    canvas = np.full((out_h, out_w, *region.shape[2:]), spec.pad_value, dtype=np.float32)
    px, py = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas[py : py + new_h, px : px + new_w] = resized
    return canvas, Placement(0, 0, w, h, scale, px, py)


def prepare(
    image: npt.NDArray[Any], spec: InputSpec
) -> tuple[npt.NDArray[np.float32], list[Placement]]:
    """Frame image -> (batch [T, C, H, W] float32 in raw units, placement of each tile).

    The same function runs in training (``lineguard_models``) and on the edge, so serving cannot
    drift from training.
    """
    check_image(image, spec)
    img = image if image.ndim == 3 else image[:, :, None]
    height, width = img.shape[:2]
    batch = np.empty((spec.tiles.count, spec.channels, spec.input_height, spec.input_width), np.float32)
    placements = []
    for i, (x0, y0, tw, th) in enumerate(tile_regions(width, height, spec.tiles)):
        region = np.ascontiguousarray(img[y0 : y0 + th, x0 : x0 + tw])
        fitted, pl = _fit(region if spec.channels == 3 else region[:, :, 0], spec)
        batch[i] = fitted.reshape(spec.input_height, spec.input_width, spec.channels).transpose(2, 0, 1)
        placements.append(Placement(x0, y0, tw, th, pl.scale, pl.pad_x, pl.pad_y))
    return batch, placements


def stitch_map(
    maps: npt.NDArray[np.float32], placements: list[Placement], width: int, height: int
) -> npt.NDArray[np.float32]:
    """Per-tile anomaly maps [T, 1, h, w] (model grid) -> one map in image pixels (max over overlaps)."""
    out = np.zeros((height, width), np.float32)
    for tile_map, pl in zip(maps, placements, strict=True):
        m = tile_map[0]
        mh, mw = m.shape
        # the map may be coarser than the model input: scale placement into map coordinates
        in_h, in_w = round(pl.height * pl.scale) + 2 * pl.pad_y, round(pl.width * pl.scale) + 2 * pl.pad_x
        sy, sx = mh / max(in_h, 1), mw / max(in_w, 1)
        y0, x0 = int(pl.pad_y * sy), int(pl.pad_x * sx)
        y1, x1 = max(y0 + 1, mh - y0), max(x0 + 1, mw - x0)
        crop = m[y0:y1, x0:x1]
        resized = cv2.resize(crop, (pl.width, pl.height), interpolation=cv2.INTER_LINEAR)
        view = out[pl.y0 : pl.y0 + pl.height, pl.x0 : pl.x0 + pl.width]
        np.maximum(view, resized, out=view)
    return out


def spec_for_images(
    images: list[npt.NDArray[Any]],
    *,
    input_width: int,
    input_height: int,
    max_value: int | None = None,
    tiles: TileSpec | None = None,
    fit: FitMode = "letterbox",
) -> InputSpec:
    """Derive the input spec from training images (used by the training toolkit).

    All images must share channels and dtype; the expected frame size is fixed when they all share
    one size (a production camera does), otherwise left open.
    """
    if not images:
        raise ImageError("no images to derive an input spec from")
    chans = {1 if im.ndim == 2 else im.shape[2] for im in images}
    dtypes = {im.dtype for im in images}
    if len(chans) != 1 or len(dtypes) != 1:
        raise ImageError(f"training images mix channel counts {sorted(chans)} or dtypes {sorted(map(str, dtypes))}")
    ch, dt = chans.pop(), dtypes.pop()
    if ch not in (1, 3) or dt not in (np.uint8, np.uint16):
        raise ImageError(f"unsupported training images: {ch} channels, {dt}")
    sizes = {im.shape[:2] for im in images}
    h, w = sizes.pop() if len(sizes) == 1 else (None, None)
    full = max_value if max_value is not None else (255 if dt == np.uint8 else 65535)
    return InputSpec(
        channels=ch,
        dtype=str(np.dtype(dt)),
        max_value=full,
        image_width=w,
        image_height=h,
        input_width=input_width,
        input_height=input_height,
        fit=fit,
        tiles=tiles or TileSpec(),
    )
