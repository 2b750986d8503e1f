"""Reading image files the way the camera delivered them (shared by replay, score and training).

Mono stays mono (HxW), colour becomes RGB order (HxWx3), 8- and 16-bit depth are kept. A file
that OpenCV cannot decode raises :class:`ImageError` naming the path; nothing is silently skipped
here: callers decide whether to list, count or refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from lineguard.errors import ImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def read_image(path: str | Path) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Decode ``path`` to HxW (mono) or HxWx3 (RGB), uint8 or uint16."""
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{p}: cannot read file ({exc.strerror})") from exc
    if data.size == 0:
        raise ImageError(f"{p}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{p}: not a decodable image (corrupt or unsupported format)")
    return normalise_layout(image, str(p))


def normalise_layout(image: npt.NDArray[Any], where: str) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """OpenCV's decoded layout -> LineGuard's (mono HxW or RGB HxWx3; alpha dropped)."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{where}: pixel type {image.dtype} unsupported (8- or 16-bit integers only)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim != 2:
        raise ImageError(f"{where}: unsupported image shape {image.shape}")
    return np.ascontiguousarray(image)  # type: ignore[return-value]


def is_grey_rgb(image: npt.NDArray[Any]) -> bool:
    """True for a 3-channel image whose channels are identical (a mono camera saved as colour)."""
    return bool(image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1])
                and np.array_equal(image[..., 1], image[..., 2]))


def encode_png(image: npt.NDArray[Any]) -> bytes:
    """Lossless PNG of a LineGuard image (mono or RGB, 8/16 bit)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageError("PNG encoding failed")
    return bytes(buf.tobytes())


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (a file or a folder searched recursively), sorted."""
    p = Path(root)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ImageError(f"{p}: no such file or folder")
    return sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
