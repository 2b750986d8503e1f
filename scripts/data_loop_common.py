"""Helpers shared by the data-loop benchmark's sections (scripts/bench_data_loop.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from lineguard_models.data import load_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets"
Image = npt.NDArray[Any]
QUIET: Callable[[str], None] = lambda s: None  # noqa: E731 - the pipeline's progress sink


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pixel_key(image: Image) -> str:
    """Identity of a decoded image: the sink stores pixels losslessly, so stored == streamed."""
    return f"{image.shape}{hash(image.tobytes())}"


def load_casting(path: Path) -> Image:
    """Casting images are grey JPEGs saved as RGB: load them as the mono camera that took them."""
    image: Image = load_image(path, mono_from_rgb=True)
    return image


def copy_into(folder: Path, paths: Sequence[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copyfile(p, folder / p.name)


EXTRA_ARMS = ("oracle", "top", "rsf")  # arms of section active beside active and random (--oracle, --top, --rsf)
