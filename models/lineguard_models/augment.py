"""Physically plausible augmentation, driven by a camera profile (training side only).

Data flow: dataset image (raw camera units, mono HxW or RGB HxWx3, uint8/uint16) -> ``augment``
-> image of the same pixel format -> shared preprocessing (``lineguard.preprocess.prepare``) ->
backbone. Augmentation happens in raw camera units *before* preprocessing, in the order the
physics happens: part placement (flip, 90-degree steps, small rotation) -> illumination (gain,
gradient, white balance) -> optics (focus blur) -> sensor (noise) -> camera response (gamma,
contrast, black-level offset) -> quantisation to the sensor's bit depth.

Only what a fixed industrial camera can produce is offered. A profile that asks for a perspective
warp, a colour shift on a mono sensor, JPEG artefacts or other kinds the camera cannot produce is
refused with the reason (:data:`NOT_PHYSICAL`). The harmful kinds used by the ablation benchmark
live in ``scripts/bench_classifier.py`` on purpose: no profile and no CLI can reach them.

Must never: change the channel count or dtype of an image, exceed the sensor's full scale, or
silently ignore a profile key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lineguard.errors import ConfigError, ImageError
from lineguard.preprocess import InputSpec

Image = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]

_PERSPECTIVE = ("the camera is fixed over a fixture, so parts are always seen from the same viewpoint; "
                "a perspective or shear warp makes views the line never produces")
_JPEG = ("the camera delivers lossless frames; JPEG block artefacts would teach the model compression "
         "noise that never reaches it on the line")
_RECOLOUR = ("hue and saturation jitter recolours the part itself, which no camera does; illumination "
             "colour changes are covered by 'white_balance_max_frac' on colour sensors")

# Requested kind -> why the camera cannot produce it. Checked before field validation so the user
# sees the reason instead of pydantic's generic "extra inputs are not permitted".
NOT_PHYSICAL: dict[str, str] = {
    "perspective": _PERSPECTIVE,
    "perspective_max_frac": _PERSPECTIVE,
    "shear": _PERSPECTIVE,
    "jpeg": _JPEG,
    "jpeg_quality": _JPEG,
    "colour_jitter": _RECOLOUR,
    "color_jitter": _RECOLOUR,
    "hue": _RECOLOUR,
    "saturation": _RECOLOUR,
    "elastic": "elastic deformation bends rigid parts, which the camera cannot do",
    "cutout": "erasing patches hides or fakes defects; it is not a camera effect",
    "mixup": "blending two parts makes an image no camera captures",
}

_Ratio = Annotated[float, Field(ge=0.25, le=4.0)]
_Gamma = Annotated[float, Field(ge=0.3, le=3.0)]
_Sigma = Annotated[float, Field(ge=0.0, le=10.0)]
_Contrast = Annotated[float, Field(ge=0.5, le=2.0)]


class CameraProfile(BaseModel):
    """What the camera can physically produce; every augmentation is bounded by it.

    Ranges are ``(low, high)`` and sampled uniformly per image; ``(1, 1)`` (or ``0``) disables a kind.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: Literal["mono", "colour"] = Field(description="mono sensor (1 channel) or colour (RGB)")
    bit_depth: int = Field(ge=8, le=16, description="sensor bit depth; full scale = 2**bit_depth - 1")
    orientation_specific: bool = Field(
        True, description="defects have a meaning tied to orientation (e.g. scratch along the feed): "
        "no flips or rotations allowed",
    )
    flips: tuple[Literal["horizontal", "vertical"], ...] = Field(
        (), max_length=2, description="mirror flips the fixture can produce (part placed either way)"
    )
    rotate_90: bool = Field(False, description="part can lie in any 90-degree orientation")
    rotation_max_deg: float = Field(
        0.0, ge=0.0, le=15.0, description="small placement rotation, +/- degrees (fixture play)"
    )
    gain_range: tuple[_Ratio, _Ratio] = Field(
        (1.0, 1.0), description="illumination / exposure gain factor range (lamp ageing, exposure drift)"
    )
    gradient_max_frac: float = Field(
        0.0, ge=0.0, le=0.5, description="max illumination change across the frame, fraction of the level"
    )
    white_balance_max_frac: float = Field(
        0.0, ge=0.0, le=0.2, description="colour sensors only: per-channel gain spread (lamp colour)"
    )
    blur_sigma_px_range: tuple[_Sigma, _Sigma] = Field(
        (0.0, 0.0), description="focus blur, Gaussian sigma in image px (depth of field, vibration)"
    )
    noise_std_max_frac: float = Field(
        0.0, ge=0.0, le=0.05, description="max sensor noise std, fraction of full scale"
    )
    gamma_range: tuple[_Gamma, _Gamma] = Field((1.0, 1.0), description="camera response gamma range")
    contrast_range: tuple[_Contrast, _Contrast] = Field(
        (1.0, 1.0), description="contrast factor around the image mean"
    )
    brightness_max_frac: float = Field(
        0.0, ge=0.0, le=0.2, description="max black-level / brightness offset, fraction of full scale"
    )
    copies_per_image: int = Field(
        2, ge=0, le=16, description="augmented copies per training image (0 = augmentation off)"
    )

    @model_validator(mode="before")
    @classmethod
    def verify_physical_kinds(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            asked = [k for k in data if k in NOT_PHYSICAL]
            if asked:
                reasons = "; ".join(f"'{k}': {NOT_PHYSICAL[k]}" for k in asked)
                raise ValueError(f"augmentation not offered because the camera cannot produce it: {reasons}")
        return data

    @model_validator(mode="after")
    def verify_consistent(self) -> CameraProfile:
        verify_orientation(self)
        verify_ranges(self)
        if self.sensor == "mono" and self.white_balance_max_frac > 0:
            raise ValueError("white_balance_max_frac needs a colour sensor: a mono sensor has no colour")
        return self

    @property
    def max_value(self) -> int:
        return int(2**self.bit_depth - 1)

    @property
    def channels(self) -> int:
        return 1 if self.sensor == "mono" else 3

    @classmethod
    def from_yaml(cls, path: Path) -> CameraProfile:
        """Load a profile file; errors name the YAML line of the offending key."""
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            doc = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
        except (OSError, YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read camera profile ({exc})") from exc
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{path}: a camera profile is a mapping of keys to values")
        try:
            return cls.model_validate(dict(doc))
        except ValidationError as exc:
            raise ConfigError(f"{path}: invalid camera profile: {_describe(exc, doc)}") from exc

    @classmethod
    def conservative_for(cls, spec: InputSpec) -> CameraProfile:
        """Default when the user gives no profile: mild illumination, focus and noise changes only.

        Orientation is assumed to matter (no flips or rotations): only the user knows otherwise.
        """
        bits = max(8, min(16, math.ceil(math.log2(spec.max_value + 1))))
        return cls(
            sensor="mono" if spec.channels == 1 else "colour",
            bit_depth=bits,
            gain_range=(0.9, 1.1),
            gradient_max_frac=0.1,
            blur_sigma_px_range=(0.0, 0.8),
            noise_std_max_frac=0.01,
            contrast_range=(0.9, 1.1),
        )

    def verify_matches(self, spec: InputSpec) -> None:
        """Refuse a profile that describes another camera than the bundle's input spec."""
        if self.channels != spec.channels:
            raise ConfigError(
                f"camera profile says {self.sensor} but the images have {spec.channels} channel(s)"
            )
        if spec.max_value > self.max_value:
            raise ConfigError(
                f"camera profile bit depth {self.bit_depth} (full scale {self.max_value}) is below "
                f"the images' full scale {spec.max_value}: set bit_depth to the camera's real depth"
            )


def verify_orientation(p: CameraProfile) -> None:
    if p.orientation_specific and (p.flips or p.rotate_90 or p.rotation_max_deg > 0):
        raise ValueError(
            "orientation_specific profile cannot allow flips or rotations: they would turn one "
            "defect orientation into another; set orientation_specific: false if orientation is irrelevant"
        )
    if len(set(p.flips)) != len(p.flips):
        raise ValueError(f"flips listed twice: {p.flips}")


def verify_ranges(p: CameraProfile) -> None:
    for name in ("gain_range", "blur_sigma_px_range", "gamma_range", "contrast_range"):
        low, high = getattr(p, name)
        if low > high:
            raise ValueError(f"{name}: low {low} is above high {high}")


def _describe(exc: ValidationError, doc: Any) -> str:
    parts = []
    for err in exc.errors():
        key = err["loc"][0] if err["loc"] else None
        line = ""
        lc = getattr(doc, "lc", None)
        if isinstance(key, str) and lc is not None and key in doc:
            line = f" (line {lc.key(key)[0] + 1})"
        loc = ".".join(str(p) for p in err["loc"]) or "(profile)"
        parts.append(f"{loc}{line}: {err['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# the augmentations, in physical order; all work on float32 in [0, 1] of the sensor's full scale


def check_image(image: npt.NDArray[Any], profile: CameraProfile) -> None:
    """Raise :class:`ImageError` unless ``image`` is a frame this camera could deliver."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"augmentation needs uint8 or uint16 images, got {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != profile.channels:
        raise ImageError(f"image has {channels} channel(s) but the camera profile is {profile.sensor}")
    if profile.max_value > np.iinfo(image.dtype).max:
        raise ImageError(f"{image.dtype} image cannot hold the profile's {profile.bit_depth}-bit values")
    if image.size and int(image.max()) > profile.max_value:
        raise ImageError(
            f"image holds value {int(image.max())} above the {profile.bit_depth}-bit full scale "
            f"{profile.max_value}: set the profile's bit_depth to the camera's real depth"
        )


def _place(x: npt.NDArray[np.float32], p: CameraProfile, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    if "horizontal" in p.flips and rng.random() < 0.5:
        x = x[:, ::-1]
    if "vertical" in p.flips and rng.random() < 0.5:
        x = x[::-1, :]
    if p.rotate_90:
        # the camera's frame never changes shape: a non-square frame can only show the part turned by 180
        x = np.rot90(x, int(rng.integers(4)) if x.shape[0] == x.shape[1] else 2 * int(rng.integers(2)))
    if p.rotation_max_deg > 0:
        h, w = x.shape[:2]
        angle = float(rng.uniform(-p.rotation_max_deg, p.rotation_max_deg))
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        # reflect keeps the border textured: a constant border would be a shape the camera never sees
        x = np.asarray(cv2.warpAffine(np.ascontiguousarray(x), m, (w, h), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REFLECT_101), np.float32)
    return np.ascontiguousarray(x, np.float32)


def _illuminate(x: npt.NDArray[np.float32], p: CameraProfile, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    h, w = x.shape[:2]
    field: npt.NDArray[np.float32] = np.full((1, 1), rng.uniform(*p.gain_range), np.float32)
    if p.gradient_max_frac > 0:
        theta = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(-p.gradient_max_frac, p.gradient_max_frac)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (np.cos(theta) * (xx / max(w - 1, 1) - 0.5) + np.sin(theta) * (yy / max(h - 1, 1) - 0.5))
        field = (field * (1.0 + np.float32(strength) * ramp)).astype(np.float32)
    if x.ndim == 3:
        field = field[..., None]
        if p.white_balance_max_frac > 0:
            wb = rng.uniform(1 - p.white_balance_max_frac, 1 + p.white_balance_max_frac, 3)
            field = field * wb.astype(np.float32)
    return (x * field).astype(np.float32)


def _optics_and_sensor(
    x: npt.NDArray[np.float32], p: CameraProfile, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    sigma = float(rng.uniform(*p.blur_sigma_px_range))
    if sigma > 0.05:
        x = np.asarray(cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101), np.float32)
    if p.noise_std_max_frac > 0:
        std = float(rng.uniform(0, p.noise_std_max_frac))
        x = x + rng.normal(0.0, std, x.shape).astype(np.float32)
    return x


def _response(x: npt.NDArray[np.float32], p: CameraProfile, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    x = np.clip(x, 0.0, 1.0)  # the sensor saturates before the response curve is applied
    gamma = float(rng.uniform(*p.gamma_range))
    if gamma != 1.0:
        x = np.power(x, np.float32(gamma))
    contrast = float(rng.uniform(*p.contrast_range))
    if contrast != 1.0:
        mean = np.float32(x.mean())
        x = (x - mean) * np.float32(contrast) + mean
    if p.brightness_max_frac > 0:
        x = x + np.float32(rng.uniform(-p.brightness_max_frac, p.brightness_max_frac))
    return x


def augment(image: Image, profile: CameraProfile, rng: np.random.Generator) -> Image:
    """One physically plausible variant of ``image``: same channels and dtype, values within full scale.

    The image may change shape only through a 90-degree rotation the profile allows.
    """
    check_image(image, profile)
    full = float(profile.max_value)
    x = image.astype(np.float32) / np.float32(full)
    x = _place(x, profile, rng)
    x = _illuminate(x, profile, rng)
    x = _optics_and_sensor(x, profile, rng)
    x = _response(x, profile, rng)
    out = np.rint(np.clip(x, 0.0, 1.0) * np.float32(full))
    result: Image = out.astype(image.dtype)
    return result


def augment_copies(
    images: list[Image], profile: CameraProfile, rng: np.random.Generator, copies: int | None = None
) -> list[list[Image]]:
    """For each image, ``copies`` (default: the profile's ``copies_per_image``) augmented variants."""
    n = profile.copies_per_image if copies is None else copies
    return [[augment(im, profile, rng) for _ in range(n)] for im in images]
