"""Teach-set capture: camera frames -> lossless PNG + JSON sidecar in the dataset layout ``train`` reads.

Where it sits: beside the service, on the line's first day (``lineguard capture``). The frames come
from the same source back-end the service uses (``lineguard.sources``), so the PNG holds exactly the
pixels the service would inspect: mono stays HxW, colour is RGB, 8 and 16 bit are kept (no scaling).
Files go to ``<dataset>/<class>/NNNNNN.png`` with ``NNNNNN.json`` beside each (camera settings, camera
timestamp, serial, frame id); ``lineguard_models.data`` reads that layout and ignores the sidecars.

Never: overwrite a file (numbers continue after the highest one in the folder and the final name is
claimed with a hard link, which fails when the name exists), leave a half-written PNG under a name
``train`` reads (data goes to a hidden ``.partial`` file first and is removed on any error, a full
disk included), or mix two pixel formats in one teach set (``train`` would refuse it later).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard.errors import ImageError, LineGuardError
from lineguard.fsutil import fsync_path
from lineguard.imageio import IMAGE_SUFFIXES, encode_png, read_image

CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# folder names lineguard_models.data gives a meaning of their own: never a class
RESERVED = frozenset({"masks", "boxes_voc_xml", "train", "test"})
_NUMBERED = re.compile(r"^(\d+)$")
_PARTIAL = ".partial"
SIDECAR_SCHEMA = 1


class CaptureError(LineGuardError):
    """A capture that must not go on: wrong folder, changed pixel format, full disk."""


@dataclass(frozen=True, slots=True)
class FrameFormat:
    """What one teach set must keep: size, channels, sample type and the camera's full scale."""

    width: int
    height: int
    channels: int
    dtype: str
    max_value: int | None = None  # None: unknown (a file without sidecar)
    pixel_format: str | None = None  # GenICam PFNC name when the frames came from a camera

    def describe(self) -> str:
        kind = "mono" if self.channels == 1 else "RGB"
        extra = f", {self.pixel_format}" if self.pixel_format else ""
        scale = f", full scale {self.max_value}" if self.max_value else ""
        return f"{self.width}x{self.height} {kind} {self.dtype}{scale}{extra}"

    def differs(self, other: FrameFormat) -> list[str]:
        """Names of the fields that differ (unknown max_value / pixel_format never count)."""
        out = [n for n in ("width", "height", "channels", "dtype") if getattr(self, n) != getattr(other, n)]
        for n in ("max_value", "pixel_format"):
            a, b = getattr(self, n), getattr(other, n)
            if a is not None and b is not None and a != b:
                out.append(n)
        return out


def format_of(image: npt.NDArray[Any], *, max_value: int | None = None, pixel_format: str | None = None) -> FrameFormat:
    return FrameFormat(width=int(image.shape[1]), height=int(image.shape[0]), channels=1 if image.ndim == 2 else 3,
                       dtype=np.dtype(image.dtype).name, max_value=max_value, pixel_format=pixel_format)


def check_class_name(name: str) -> str:
    if not CLASS_NAME.match(name) or name.lower() in RESERVED:
        raise CaptureError(
            f"--class {name!r} is not a usable class folder name: use letters, digits, '_', '.', '-' (e.g. good, "
            f"scratch, dent_2), not one of {sorted(RESERVED)}"
        )
    return name


class TeachSetWriter:
    """Writes numbered frames into one class folder of a dataset, never overwriting."""

    def __init__(self, dataset: Path, class_name: str, *, fsync: bool = True) -> None:
        self.dataset = Path(dataset)
        self.class_name = check_class_name(class_name)
        self.folder = self.dataset / class_name
        self._fsync = fsync
        if (self.dataset / "train").is_dir() or (self.dataset / "test").is_dir():
            raise CaptureError(
                f"{self.dataset} uses the split layout (train/, test/): capture into {self.dataset / 'train'} "
                "(or test/) instead, so the new class folder sits beside the others"
            )
        if self.dataset.exists() and not self.dataset.is_dir():
            raise CaptureError(f"--out {self.dataset} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f".*{_PARTIAL}"):  # a capture killed mid-write left these
            stale.unlink(missing_ok=True)
        self.next_number = self._first_free_number()
        self.written: list[Path] = []

    def _first_free_number(self) -> int:
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _NUMBERED.match(p.stem))]
        return max(numbers, default=0) + 1

    # ----- checks before the first frame is written ---------------------------------------------

    def existing_format(self) -> tuple[FrameFormat, Path] | None:
        """The format of the teach set already on disk (the newest image of each class folder, this one
        first), or None for a new dataset. An unreadable image is reported, not guessed around."""
        others = sorted(p for p in self.dataset.iterdir() if p.is_dir() and p != self.folder
                        and not p.name.startswith(".") and p.name not in RESERVED)
        folders = [self.folder, *others]
        for folder in folders:
            images = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                             and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.stat().st_mtime_ns)
            if not images:
                continue
            newest = images[-1]
            try:
                image = read_image(newest)
            except ImageError as exc:
                raise CaptureError(f"cannot check the pixel format against {newest}: {exc}; fix or remove it") from exc
            side = _read_sidecar(newest.with_suffix(".json"))
            return format_of(image, max_value=side.get("max_value"), pixel_format=side.get("pixel_format")), newest
        return None

    def check_format(self, fmt: FrameFormat) -> None:
        """Refuse a frame format that differs from the frames already in the dataset."""
        found = self.existing_format()
        if found is None:
            return
        old, example = found
        diff = old.differs(fmt)
        if diff:
            raise CaptureError(
                f"pixel format changed: {example.parent} holds {old.describe()} frames (e.g. {example.name}) but "
                f"the camera now delivers {fmt.describe()} ({', '.join(diff)} differ). One teach set is one camera "
                "format (lineguard train refuses a mix): set the source's pixel_format/width/height back, or "
                "capture into a new --out folder"
            )

    def check_space(self, frame_bytes: int, count: int, reserve_bytes: int) -> None:
        """Refuse when ``count`` frames (uncompressed size: PNG rarely exceeds it) plus the reserve
        would not fit on the disk."""
        free = shutil.disk_usage(self.folder).free
        need = count * (frame_bytes + 4096) + reserve_bytes
        if free < need:
            raise CaptureError(
                f"not enough free disk space in {self.folder}: {free / 2**20:.1f} MiB free, {count} frames of "
                f"{frame_bytes / 2**20:.2f} MiB each plus the {reserve_bytes / 2**20:.0f} MiB reserve need "
                f"{need / 2**20:.1f} MiB. Free space, capture fewer frames (--count), or write elsewhere (--out)"
            )

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    # ----- writing ----------------------------------------------------------------------------------

    def write(self, image: npt.NDArray[Any], sidecar: dict[str, Any]) -> Path:
        """Write one frame and its sidecar under the next free number; returns the PNG path.

        The PNG and the JSON are written to hidden ``.partial`` files and fsynced first; only then are
        the final names claimed, so a full disk or a crash never leaves a half image ``train`` reads.
        """
        png = encode_png(image)
        while True:
            stem = f"{self.next_number:06d}"
            self.next_number += 1
            target = self.folder / f"{stem}.png"
            side = target.with_suffix(".json")
            if target.exists() or side.exists():  # another capture into the same folder: skip the number
                continue
            doc = {**sidecar, "file": target.name, "sha256": hashlib.sha256(png).hexdigest(), "schema": SIDECAR_SCHEMA}
            tmp_png, tmp_side = self.folder / f".{stem}.png{_PARTIAL}", self.folder / f".{stem}.json{_PARTIAL}"
            try:
                self._write_file(tmp_png, png)
                self._write_file(tmp_side, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
                if not _claim(tmp_png, target):
                    continue  # taken meanwhile: next number (the partial files are removed below)
                os.replace(tmp_side, side)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise CaptureError(
                        f"disk full while writing {target} ({len(self.written)} frames written and kept, the "
                        f"unfinished one removed): free space in {self.folder.parent} or capture elsewhere"
                    ) from exc
                raise CaptureError(f"cannot write {target}: {exc.strerror or exc}") from exc
            finally:
                tmp_png.unlink(missing_ok=True)
                tmp_side.unlink(missing_ok=True)
            self.written.append(target)
            return target

    def _write_file(self, path: Path, data: bytes) -> None:
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())

    def close(self) -> None:
        """Make the renames durable (one folder fsync for the whole capture)."""
        if self._fsync and self.written:
            fsync_path(self.folder)


def _claim(tmp: Path, target: Path) -> bool:
    """Give ``tmp`` the name ``target`` unless that name exists (False then). A hard link is the
    atomic no-overwrite rename; file systems without links (FAT) fall back to check-then-rename."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if target.exists():
            return False
        os.replace(tmp, target)
    return True


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The format fields of a capture sidecar, {} when there is none or it is not ours."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    image = doc.get("image") if isinstance(doc, dict) else None
    if not isinstance(image, dict):
        return {}
    return {k: image.get(k) for k in ("max_value", "pixel_format")}


def sidecar_image(fmt: FrameFormat) -> dict[str, Any]:
    """The ``image`` section of a sidecar (the fields :meth:`TeachSetWriter.check_format` compares)."""
    return asdict(fmt)
