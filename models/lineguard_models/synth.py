"""Synthetic inspection datasets: textured metal surfaces with rendered defects.

Sits *before* the data flow: it writes a dataset folder in the contract ``lineguard_models.data``
reads (``<root>/good/*``, ``<root>/<defect_class>/*``, optionally under ``train/`` and ``test/``),
so tests, the demo and benchmarks can exercise training, calibration and the edge without any
real data. Surfaces are brushed metal (streaks along x) or cast metal (isotropic grain), mono or
RGB, 8 or 16 bit; defects are scratches, pits, cracks and stains. Every image is a pure function
of ``(seed, class, index)``, so changing the number of images never changes the images already
there.

Must never: read or depend on real datasets, use global random state, or write outside ``root``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFECT_KINDS: tuple[str, ...] = ("scratch", "pit", "crack", "stain")
Texture = Literal["brushed", "cast"]
FileFormat = Literal["png", "bmp", "tiff", "jpg"]
FloatImage = npt.NDArray[np.float32]

# RGB tint of the metal; a tint (not grey) makes RGB datasets truly colour, so the loader's
# "colour file with identical channels" detection is not triggered by accident.
_METAL_TINT = np.array([1.0, 0.97, 0.90], np.float32)
_STAIN_TINT = np.array([0.75, 0.55, 0.30], np.float32)  # rust-brown


class SynthConfig(BaseModel):
    """What :func:`write_dataset` generates. Defaults are small so tests stay fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width_px: int = Field(128, ge=32, le=4096, description="image width in px")
    height_px: int = Field(96, ge=32, le=4096, description="image height in px")
    channels: Literal[1, 3] = Field(1, description="1 = mono camera, 3 = RGB")
    bit_depth: Literal[8, 16] = Field(8, description="8-bit (uint8) or 16-bit (uint16) pixels")
    texture: Texture = Field("brushed", description="brushed metal (streaks) or cast metal (grain)")
    n_good: int = Field(20, ge=0, le=100_000, description="good images (per split when split=True)")
    n_defect_per_class: int = Field(5, ge=0, le=100_000, description="images per defect class")
    defect_classes: tuple[str, ...] = Field(DEFECT_KINDS, description=f"subset of {DEFECT_KINDS}")
    split: bool = Field(False, description="write train/good + test/<class> instead of a flat layout")
    n_test_good: int = Field(5, ge=0, le=100_000, description="good images in test/ when split=True")
    file_format: FileFormat = Field("png", description="file format; jpg only for 8-bit")
    masks: bool = Field(False, description="also write masks/<class>/<name>_mask.png (must be ignored)")
    defect_strength: float = Field(1.0, gt=0.0, le=5.0, description="contrast multiplier of defects")
    seed: int = Field(0, ge=0, description="random seed; same seed -> byte-identical images")

    @model_validator(mode="after")
    def verify_format(self) -> SynthConfig:
        unknown = [c for c in self.defect_classes if c not in DEFECT_KINDS]
        if unknown:
            raise ValueError(f"unknown defect classes {unknown}; choose from {DEFECT_KINDS}")
        if self.file_format == "jpg" and self.bit_depth != 8:
            raise ValueError("JPEG stores 8-bit images only; use png or tiff for 16 bit")
        if self.file_format == "bmp" and self.bit_depth != 8:
            raise ValueError("BMP stores 8-bit images only; use png or tiff for 16 bit")
        return self


@dataclass(frozen=True, slots=True)
class SynthDataset:
    """What was written: the root and every image path by label (``good`` or defect class)."""

    root: Path
    config: SynthConfig
    files: dict[str, tuple[Path, ...]]

    def count(self, label: str) -> int:
        return len(self.files.get(label, ()))


def _rng(seed: int, label: str, index: int) -> np.random.Generator:
    # Label hashed stably (not Python's salted hash) so images are reproducible across processes.
    label_key = sum((i + 1) * ord(ch) for i, ch in enumerate(label))
    return np.random.default_rng([seed, label_key, index])


def _blurred_noise(rng: np.random.Generator, h: int, w: int, sx: float, sy: float) -> FloatImage:
    noise = rng.standard_normal((h, w)).astype(np.float32)
    out = cv2.GaussianBlur(noise, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    return np.asarray(out / max(float(out.std()), 1e-6), dtype=np.float32)


def render_surface(rng: np.random.Generator, cfg: SynthConfig) -> FloatImage:
    """A defect-free surface in [0, 1], HxW (mono) or HxWx3 (RGB)."""
    h, w = cfg.height_px, cfg.width_px
    scale = min(h, w) / 96.0
    if cfg.texture == "brushed":
        streaks = _blurred_noise(rng, h, w, sx=12.0 * scale, sy=0.6)
        fine = _blurred_noise(rng, h, w, sx=0.7, sy=0.7)
        surf = 0.55 + 0.05 * streaks + 0.015 * fine
    else:
        grain = _blurred_noise(rng, h, w, sx=1.2 * scale, sy=1.2 * scale)
        mottle = _blurred_noise(rng, h, w, sx=8.0 * scale, sy=8.0 * scale)
        surf = 0.50 + 0.035 * grain + 0.03 * mottle
    # Soft illumination gradient, a little different per part (the camera sees this on a real line).
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.04, 0.04, size=2)
    surf = surf + gx * (xx / w - 0.5) + gy * (yy / h - 0.5) + rng.uniform(-0.015, 0.015)
    if cfg.channels == 3:
        rgb = surf[:, :, None] * _METAL_TINT[None, None, :]
        rgb = rgb + 0.006 * rng.standard_normal((h, w, 3)).astype(np.float32)
        return np.asarray(np.clip(rgb, 0.0, 1.0), dtype=np.float32)
    return np.asarray(np.clip(surf, 0.0, 1.0), dtype=np.float32)


def _blend(img: FloatImage, mask: FloatImage, delta: float | npt.NDArray[np.float32]) -> FloatImage:
    """Add ``delta`` (scalar, or per-channel for RGB) weighted by ``mask`` in [0, 1]."""
    if img.ndim == 3:
        d = np.broadcast_to(np.asarray(delta, np.float32), (3,))
        return np.clip(img + mask[:, :, None] * d[None, None, :], 0.0, 1.0).astype(np.float32)
    d_scalar = float(np.mean(np.asarray(delta, np.float32)))
    return np.clip(img + mask * d_scalar, 0.0, 1.0).astype(np.float32)


def _scratch(rng: np.random.Generator, img: FloatImage, s: float) -> tuple[FloatImage, FloatImage]:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    length = rng.uniform(0.3, 0.6) * min(h, w)
    angle = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    p0, p1 = (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy))
    thickness = 1 if min(h, w) < 200 else 2
    cv2.line(mask, p0, p1, 1.0, thickness=thickness, lineType=cv2.LINE_AA)
    sign = 1.0 if rng.random() < 0.5 else -1.0  # scratches catch the light or look dark
    return _blend(img, mask, sign * 0.35 * s), mask


def _pit(rng: np.random.Generator, img: FloatImage, s: float) -> tuple[FloatImage, FloatImage]:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    rim = np.zeros((h, w), np.float32)
    m = min(h, w)
    for _ in range(int(rng.integers(1, 4))):
        r = max(2, round(rng.uniform(0.025, 0.05) * m))
        c = (round(rng.uniform(0.15, 0.85) * w), round(rng.uniform(0.15, 0.85) * h))
        cv2.circle(mask, c, r, 1.0, thickness=-1, lineType=cv2.LINE_AA)
        # light from the top-left: the lower-right rim of the crater shines
        cv2.ellipse(rim, c, (r, r), 0, -30, 120, 1.0, thickness=1, lineType=cv2.LINE_AA)
    out = _blend(img, mask, -0.40 * s)
    return _blend(out, rim, 0.25 * s), np.maximum(mask, rim)


def _crack(rng: np.random.Generator, img: FloatImage, s: float) -> tuple[FloatImage, FloatImage]:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    m = min(h, w)
    starts = [(rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0, 2 * math.pi))]
    steps = int(rng.integers(12, 20))
    step = m * 0.025
    while starts:
        x, y, heading = starts.pop()
        for _ in range(steps):
            heading += rng.normal(0, 0.45)
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            cv2.line(mask, (round(x), round(y)), (round(nx), round(ny)), 1.0, 1, cv2.LINE_AA)
            x, y = nx, ny
            if rng.random() < 0.08 and len(starts) < 2:  # cracks branch
                starts.append((x, y, heading + rng.choice([-0.9, 0.9])))
        steps = max(4, steps // 2)
    return _blend(img, mask, -0.45 * s), mask


def _stain(rng: np.random.Generator, img: FloatImage, s: float) -> tuple[FloatImage, FloatImage]:
    h, w = img.shape[:2]
    m = min(h, w)
    blob = np.zeros((h, w), np.float32)
    c = (round(rng.uniform(0.25, 0.75) * w), round(rng.uniform(0.25, 0.75) * h))
    axes = (max(3, round(rng.uniform(0.08, 0.16) * m)), max(3, round(rng.uniform(0.06, 0.12) * m)))
    cv2.ellipse(blob, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    soft = cv2.GaussianBlur(blob, (0, 0), sigmaX=max(axes) * 0.35)
    blob = np.asarray(soft / max(float(soft.max()), 1e-6), dtype=np.float32)
    # A stain darkens and (in colour) shifts towards rust: per-channel delta.
    delta = -(1.0 - _STAIN_TINT) * 0.45 * s - 0.08 * s
    return _blend(img, blob, delta), (blob > 0.2).astype(np.float32)


_RENDERERS = {"scratch": _scratch, "pit": _pit, "crack": _crack, "stain": _stain}


def draw_defect(rng: np.random.Generator, img: FloatImage, kind: str, strength: float) -> FloatImage:
    """``kind`` drawn on any [0, 1] float image (H x W or H x W x 3); used by ``autoconfig`` to judge
    a line's candidate recipes when it has no defect images of its own."""
    return _RENDERERS[kind](rng, img, strength)[0]


def render_image(cfg: SynthConfig, label: str, index: int) -> tuple[FloatImage, FloatImage]:
    """(image in [0, 1], defect mask) for ``label`` ('good' or a defect kind) number ``index``."""
    rng = _rng(cfg.seed, label, index)
    surf = render_surface(rng, cfg)
    if label == "good":
        return surf, np.zeros(surf.shape[:2], np.float32)
    return _RENDERERS[label](rng, surf, cfg.defect_strength)


def to_pixels(img: FloatImage, bit_depth: int) -> npt.NDArray[Any]:
    """[0, 1] float -> uint8 or uint16 full-scale pixels."""
    if bit_depth == 8:
        return np.round(img * 255.0).astype(np.uint8)
    return np.round(img * 65535.0).astype(np.uint16)


def render_pixels(cfg: SynthConfig, label: str, index: int) -> npt.NDArray[Any]:
    """Image ``index`` of ``label`` as camera pixels (``cfg.bit_depth``), without its mask."""
    return to_pixels(render_image(cfg, label, index)[0], cfg.bit_depth)


def save_image(path: Path, pixels: npt.NDArray[Any]) -> None:
    """Write an HxW or HxWx3 (RGB order) image; raises OSError when OpenCV cannot write it."""
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"OpenCV could not write {path}")


def write_dataset(root: str | Path, cfg: SynthConfig | None = None) -> SynthDataset:
    """Write a dataset in the folder contract under ``root`` (created; must be empty or absent)."""
    cfg = cfg or SynthConfig()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; synthetic datasets are written to fresh folders")
    plan: list[tuple[str, str, int]] = []  # (folder, label, index)
    if cfg.split:
        plan += [("train/good", "good", i) for i in range(cfg.n_good)]
        plan += [("test/good", "good", cfg.n_good + i) for i in range(cfg.n_test_good)]
        prefix = "test/"
    else:
        plan += [("good", "good", i) for i in range(cfg.n_good)]
        prefix = ""
    for kind in cfg.defect_classes:
        plan += [(prefix + kind, kind, i) for i in range(cfg.n_defect_per_class)]
    files: dict[str, list[Path]] = {}
    for folder, label, index in plan:
        out_dir = root / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        img, mask = render_image(cfg, label, index)
        path = out_dir / f"{label}_{index:04d}.{cfg.file_format}"
        save_image(path, to_pixels(img, cfg.bit_depth))
        files.setdefault(label, []).append(path)
        if cfg.masks and label != "good":
            mdir = root / "masks" / label
            mdir.mkdir(parents=True, exist_ok=True)
            save_image(mdir / f"{label}_{index:04d}_mask.png", to_pixels((mask > 0.1).astype(np.float32), 8))
    return SynthDataset(root=root, config=cfg, files={k: tuple(v) for k, v in files.items()})
