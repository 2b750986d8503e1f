"""Drift measures: image quality of one frame, the population stability index, the reference.

Where it sits: the pure bottom of drift monitoring. The training pipeline measures the good
calibration images with :func:`reference_from_images` into ``manifest.calibration["reference"]``;
on the line the drift monitor's thread (``drift.py``) measures judged frames with
:func:`measure_quality` and the detector (``drift_detect.py``) compares rolling windows with the
reference through :func:`psi`. One module for both sides, so the line and the reference are
measured with the same code.

Must never: hold state, start threads or touch metrics (pure functions and values only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from lineguard.bundle import Bundle
from lineguard.errors import ImageError

log = logging.getLogger(__name__)

QUALITY_FEATURES = ("brightness", "contrast", "focus", "saturation")
FEATURES = ("score", *QUALITY_FEATURES)
REFERENCE_VERSION = 1
_MAX_REFERENCE_VALUES = 512  # quantiles kept per feature: enough for 10 PSI bins, small manifest
_PSI_EPS = 1e-4  # empty-bin floor; keeps PSI finite when a window leaves the reference range
_FOCUS_CROP_PX = 512  # focus is measured at native resolution (downsampling would hide blur)
_STATS_PIXELS = 65_536  # brightness/contrast/saturation on a strided subsample of about this many


class RegionPx(BaseModel):
    """A rectangle in frame pixels (after the camera's own ROI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x_px: int = Field(ge=0, le=65_535, description="left edge, pixels from the frame's left")
    y_px: int = Field(ge=0, le=65_535, description="top edge, pixels from the frame's top")
    width_px: int = Field(ge=8, le=65_535, description="width in pixels")
    height_px: int = Field(ge=8, le=65_535, description="height in pixels")


@dataclass(frozen=True, slots=True)
class ImageQuality:
    """Scale-free image statistics; brightness/contrast as fractions of full scale."""

    brightness: float  # mean / full scale
    contrast: float  # standard deviation / full scale
    focus: float  # variance of the Laplacian of the central crop, image in [0, 1]
    saturation: float  # share of pixels at or above saturation_level x full scale

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in QUALITY_FEATURES}


def measure_quality(image: npt.NDArray[Any], max_value: int, *, saturation_level: float = 0.98,
                    regions: Sequence[RegionPx] = ()) -> ImageQuality:
    """Image quality of one frame (mono HxW or RGB HxWx3, uint8/uint16); about 1 ms at 5 MP.

    Whole frame by default (focus on the central crop); with ``regions``, on those rectangles only
    (their pixels pooled; focus = area-weighted mean of each region's Laplacian variance, so region
    borders never count as edges).
    """
    if image.ndim not in (2, 3) or image.size == 0 or max_value <= 0:
        raise ImageError(f"drift: cannot measure an image of shape {image.shape} with full scale {max_value}")
    if regions:
        return _measure_regions(image, max_value, saturation_level, regions)
    h, w = image.shape[:2]
    step = max(1, math.isqrt(h * w // _STATS_PIXELS))
    sub = np.asarray(image[::step, ::step], dtype=np.float32)
    y0, x0 = max(0, (h - _FOCUS_CROP_PX) // 2), max(0, (w - _FOCUS_CROP_PX) // 2)
    crop = image[y0 : y0 + _FOCUS_CROP_PX, x0 : x0 + _FOCUS_CROP_PX]
    return _quality(sub, [(_laplacian_var(crop, max_value), crop.shape[0] * crop.shape[1])], max_value,
                    saturation_level, colour=image.ndim == 3)


def _measure_regions(image: npt.NDArray[Any], max_value: int, saturation_level: float,
                     regions: Sequence[RegionPx]) -> ImageQuality:
    h, w = image.shape[:2]
    pixels: list[npt.NDArray[np.float32]] = []
    focus: list[tuple[float, int]] = []
    for r in regions:
        if r.x_px + r.width_px > w or r.y_px + r.height_px > h:
            raise ImageError(f"drift: region x={r.x_px} y={r.y_px} {r.width_px}x{r.height_px} px lies outside "
                             f"the {w}x{h} frame: fix drift.imaging_roi_px")
        crop = image[r.y_px : r.y_px + r.height_px, r.x_px : r.x_px + r.width_px]
        step = max(1, math.isqrt(crop.shape[0] * crop.shape[1] // _STATS_PIXELS))
        pixels.append(np.asarray(crop[::step, ::step], dtype=np.float32).reshape(-1, *crop.shape[2:]))
        focus.append((_laplacian_var(crop, max_value), crop.shape[0] * crop.shape[1]))
    return _quality(np.concatenate(pixels), focus, max_value, saturation_level, colour=image.ndim == 3)


def _laplacian_var(crop: npt.NDArray[Any], max_value: int) -> float:
    f = np.asarray(crop, dtype=np.float32)
    if f.ndim == 3:
        f = f.mean(axis=2)
    return float(cv2.Laplacian(f / float(max_value), cv2.CV_32F, ksize=3).var())


def _quality(sub: npt.NDArray[np.float32], focus: Sequence[tuple[float, int]], max_value: int,
             saturation_level: float, *, colour: bool) -> ImageQuality:
    """``sub``: pixels (colour in the last axis when ``colour``); ``focus``: (variance, area) pairs."""
    grey = sub.mean(axis=-1) if colour else sub
    area = sum(a for _, a in focus)
    return ImageQuality(
        brightness=float(grey.mean()) / max_value,
        contrast=float(grey.std()) / max_value,
        focus=sum(v * a for v, a in focus) / area,
        saturation=float(np.count_nonzero(sub >= saturation_level * max_value)) / sub.size,
    )


def psi(reference: npt.NDArray[np.float64], window: npt.NDArray[np.float64], bins: int) -> float:
    """Population stability index of ``window`` against ``reference``; bins are reference quantiles.

    Proportions are floored at 1e-4 so a window entirely outside the reference range gives a large
    finite value. Identical distributions give 0; 0.1 is a moderate and 0.25 a significant shift.
    """
    if reference.size == 0 or window.size == 0:
        return 0.0
    k = max(2, min(bins, reference.size // 5 or 2))
    inner = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, k + 1)[1:-1]))
    # right-closed bins so a reference pinned at one value (e.g. saturation 0) has its own bin
    ref_p = np.bincount(np.searchsorted(inner, reference, side="left"), minlength=inner.size + 1) / reference.size
    win_p = np.bincount(np.searchsorted(inner, window, side="left"), minlength=inner.size + 1) / window.size
    ref_p = np.maximum(ref_p, _PSI_EPS)
    win_p = np.maximum(win_p, _PSI_EPS)
    return float(np.sum((win_p - ref_p) * np.log(win_p / ref_p)))


# ---------------------------------------------------------------------------------------------
# the reference


@dataclass(frozen=True, slots=True)
class DriftReference:
    """Per-feature reference values (sorted), from the calibration's good images."""

    values: Mapping[str, npt.NDArray[np.float64]]
    source: str  # "calibration" or "golden"

    @classmethod
    def build(cls, *, scores: Iterable[float], qualities: Iterable[ImageQuality], source: str) -> DriftReference:
        cols: dict[str, list[float]] = {"score": [float(s) for s in scores if math.isfinite(s)]}
        qs = list(qualities)
        for name in QUALITY_FEATURES:
            cols[name] = [getattr(q, name) for q in qs]
        return cls(values={k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in cols.items()}, source=source)

    def to_json(self) -> dict[str, Any]:
        """The manifest form: at most 512 quantiles per feature, 6 significant digits."""
        out: dict[str, Any] = {"version": REFERENCE_VERSION, "features": {}}
        for name, vals in self.values.items():
            if vals.size > _MAX_REFERENCE_VALUES:
                vals = np.quantile(vals, np.linspace(0.0, 1.0, _MAX_REFERENCE_VALUES))
            out["features"][name] = [float(f"{v:.6g}") for v in vals]
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], source: str = "calibration") -> DriftReference:
        if doc.get("version") != REFERENCE_VERSION:
            raise ValueError(f"drift reference version {doc.get('version')} unsupported")
        feats = doc.get("features", {})
        return cls(values={k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in feats.items()
                           if k in FEATURES}, source=source)

    @classmethod
    def for_bundle(cls, bundle: Bundle, *, saturation_level: float = 0.98) -> DriftReference | None:
        """The manifest's reference, else the good golden images (thin: warned), else None."""
        m = bundle.manifest
        doc = m.calibration.get("reference")
        if isinstance(doc, Mapping):
            return cls.from_json(doc)
        from lineguard.imageio import read_image  # only on this fallback path

        goods = [g for g in m.golden if g.label == "good"]
        if not goods:
            log.warning("bundle %s has no drift reference and no good golden image: drift monitoring off",
                        m.bundle_id)
            return None
        log.warning("bundle %s has no drift reference (older training pipeline); using its %d good golden "
                    "images, too few for reliable drift alarms: retrain to get one", m.bundle_id, len(goods))
        qualities = [measure_quality(read_image(bundle.path(g.file)), m.input.max_value,
                                     saturation_level=saturation_level) for g in goods]
        return cls.build(scores=[g.expected_score for g in goods], qualities=qualities, source="golden")


def accepted_reference_scores(reference: DriftReference, lower: float) -> npt.NDArray[np.float64]:
    """Reference scores that the bundle would accept: compare like with like (the window only
    holds accepted parts, so its distribution is cut at ``lower`` too)."""
    ref = reference.values.get("score", np.empty(0))
    return ref[ref < lower]


def reference_from_images(images: Sequence[npt.NDArray[Any]], scores: Sequence[float], max_value: int,
                          *, saturation_level: float = 0.98) -> dict[str, Any]:
    """The manifest's ``calibration["reference"]`` from good calibration images and their scores
    (called by the training pipeline so training and the line measure with the same code)."""
    qualities = [measure_quality(img, max_value, saturation_level=saturation_level) for img in images]
    return DriftReference.build(scores=scores, qualities=qualities, source="calibration").to_json()
