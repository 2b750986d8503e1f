"""``lineguard augment-preview``: contact sheet of camera-profile augmentations.

Sits beside training: an engineer runs it on the dataset folder with the camera profile before
training, and checks that every variant looks like something the camera could capture. One row per
sample image: the original on the left, then augmented variants. Mono stays mono (a grey PNG);
16-bit images are scaled to 8 bits for display only.

Must never: write into the dataset folder or use augmentations the profile does not allow.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from lineguard.errors import DatasetError, ImageError
from lineguard.imageio import encode_png, is_grey_rgb, list_images, read_image
from lineguard_models.augment import CameraProfile, augment

HELP = "write a contact sheet of physically plausible augmentations"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder (or one class folder)")
    p.add_argument("--profile", type=Path, required=True, help="camera profile YAML")
    p.add_argument("--out", type=Path, required=True, help="contact sheet PNG to write")
    p.add_argument("--samples", type=int, default=6, help="rows: sample images taken from the folder")
    p.add_argument("--variants", type=int, default=7, help="augmented variants per sample")
    p.add_argument("--cell-px", type=int, default=160, help="size of one cell of the sheet, px")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same sheet)")


def _to_display(image: npt.NDArray[Any], full: int, cell: int) -> npt.NDArray[np.uint8]:
    """Raw image -> 8-bit cell of ``cell`` x ``cell`` px, aspect kept (display only)."""
    x = np.clip(image.astype(np.float32) * (255.0 / full), 0, 255).astype(np.uint8)
    h, w = x.shape[:2]
    s = cell / max(h, w)
    x = cv2.resize(x, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((cell, cell, *x.shape[2:]), np.uint8)
    y0, x0 = (cell - x.shape[0]) // 2, (cell - x.shape[1]) // 2
    canvas[y0 : y0 + x.shape[0], x0 : x0 + x.shape[1]] = x
    return canvas


def contact_sheet(
    images: list[npt.NDArray[Any]], profile: CameraProfile, *, variants: int, cell_px: int, seed: int
) -> npt.NDArray[np.uint8]:
    """Rows of [original, variant 1 .. variant n], 2 px gaps; mono in -> mono sheet."""
    rng = np.random.default_rng(seed)
    gap = 2
    rows = []
    for im in images:
        cells = [_to_display(im, profile.max_value, cell_px)]
        cells += [_to_display(augment(im, profile, rng), profile.max_value, cell_px) for _ in range(variants)]
        pad = np.full((cell_px, gap, *cells[0].shape[2:]), 255, np.uint8)
        row = np.concatenate([c for cell in cells for c in (cell, pad)][:-1], axis=1)
        rows.append(row)
        rows.append(np.full((gap, *row.shape[1:]), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def _load_samples(root: Path, profile: CameraProfile, count: int, seed: int) -> list[npt.NDArray[Any]]:
    paths = list_images(root)
    if not paths:
        raise DatasetError(f"{root}: no images found")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(count, len(paths)), replace=False).tolist())
    images = []
    for i in chosen:
        im = read_image(paths[i])
        if profile.sensor == "mono" and is_grey_rgb(im):
            im = np.ascontiguousarray(im[..., 0])  # a mono camera's frame saved as 3 equal channels
        images.append(im)
    return images


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.variants < 1 or not 32 <= args.cell_px <= 1024:
        raise ImageError("--samples and --variants must be >= 1 and --cell-px in [32, 1024]")
    profile = CameraProfile.from_yaml(args.profile)
    images = _load_samples(args.data, profile, args.samples, args.seed)
    sheet = contact_sheet(images, profile, variants=args.variants, cell_px=args.cell_px, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(encode_png(sheet))
    log.info("wrote %s: %d samples x %d variants (%s, %d-bit profile)", args.out, len(images),
             args.variants, profile.sensor, profile.bit_depth)
    return 0
