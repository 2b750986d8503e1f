"""Dataset folders for training and calibration: discovery, validation, pixel format, fingerprint.

First stage of the training data flow: a dataset folder -> :class:`Dataset` (a frozen list of
samples plus the camera's pixel format) -> training (good images) and calibration (held-out good
and defect images). The folder contract (``docs/training.md``)::

    <root>/good/*                 <root>/train/good/*   (split layout; test/ likewise)
    <root>/<defect_class>/*       <root>/test/<defect_class>/*

``masks/`` and ``boxes_voc_xml/`` folders, ``manifest.csv``, hidden files and the ``NNNNNN.json`` sidecar
``lineguard capture`` writes beside each ``NNNNNN.png`` are not data. An optional
``<root>/fit_only.txt`` lists good training images (relative paths, one per line) that may join the
memory bank but must never set a threshold: frames chosen *for their score* by the data loop are not
a sample of the line, so calibrating on them would bias the thresholds (``docs/data-loop.md``). Every
image is decoded once while scanning, so an unreadable or empty file is found *before* training:
by default it stops the scan with a :class:`DatasetError` listing every bad path; with
``allow_unreadable`` the files are skipped, logged as a warning and kept in ``Dataset.skipped`` so
the training report and the bundle provenance list them. A mono camera stays mono; a colour
dataset whose every image has identical channels (greyscale saved as RGB) is treated as mono and
the log says so.

Must never: silently drop a file, guess a class from a file name, or turn mono into colour.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lineguard.errors import DatasetError, ImageError
from lineguard.imageio import IMAGE_SUFFIXES, is_grey_rgb, read_image

log = logging.getLogger(__name__)

GOOD = "good"
NOT_CLASSES = frozenset({"masks", "boxes_voc_xml"})
NOT_DATA_FILES = frozenset({"manifest.csv"})
FIT_ONLY_FILE = "fit_only.txt"  # good training images that fit the model and never calibrate
SPLITS = ("train", "test")
Split = Literal["train", "test", ""]
Image = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Sample:
    """One image file of the dataset."""

    path: Path
    rel: str  # posix path relative to the dataset root, used in reports and the fingerprint
    label: str  # 'good' or the defect class
    split: Split  # 'train', 'test' or '' (flat layout)


@dataclass(frozen=True, slots=True)
class BadFile:
    """A file that could not be used, and why."""

    rel: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dataset:
    """A scanned, validated dataset. Made by :func:`scan_dataset`; images are read on demand."""

    root: Path
    samples: tuple[Sample, ...]
    defect_classes: tuple[str, ...]
    channels: Literal[1, 3]
    dtype: Literal["uint8", "uint16"]
    mono_from_rgb: bool  # colour files with identical channels, loaded as mono
    fingerprint: str  # sha256 over sorted relative paths + file hashes (provenance)
    skipped: tuple[BadFile, ...] = ()
    warnings: tuple[str, ...] = ()
    sizes: tuple[tuple[int, int], ...] = field(default=())  # distinct (width, height) seen
    fit_only: frozenset[str] = frozenset()  # rel paths of good training images never used to calibrate

    def good(self, split: Split | None = None) -> list[Sample]:
        return [s for s in self.samples if s.label == GOOD and (split is None or s.split == split)]

    def defects(self, label: str | None = None) -> list[Sample]:
        return [s for s in self.samples if s.label != GOOD and (label is None or s.label == label)]

    def load(self, sample: Sample) -> Image:
        """Decode one image in the dataset's pixel format (mono stays mono)."""
        return load_image(sample.path, mono_from_rgb=self.mono_from_rgb)

    def summary(self) -> dict[str, Any]:
        """Counts and format for logs, reports and the bundle provenance."""
        counts = Counter(f"{s.split}/{s.label}" if s.split else s.label for s in self.samples)
        return {
            "root": str(self.root),
            "fingerprint": self.fingerprint,
            "channels": self.channels,
            "dtype": self.dtype,
            "mono_from_rgb": self.mono_from_rgb,
            "counts": dict(sorted(counts.items())),
            "defect_classes": list(self.defect_classes),
            "skipped": [{"file": b.rel, "reason": b.reason} for b in self.skipped],
            "warnings": list(self.warnings),
            "fit_only": len(self.fit_only),
        }


def load_image(path: Path, *, mono_from_rgb: bool) -> Image:
    """Read an image; when the dataset is mono-from-RGB, keep one of the identical channels."""
    img: Image = read_image(path)
    if mono_from_rgb and img.ndim == 3:
        mono: Image = np.ascontiguousarray(img[:, :, 0])
        return mono
    return img


def _class_dirs(base: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in sorted(base.iterdir())
        if p.is_dir() and p.name not in NOT_CLASSES and not p.name.startswith(".")
    }


def _discover(root: Path) -> list[tuple[Split, str, Path]]:
    """(split, label, folder) of every class folder; raises on a broken layout."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    top = _class_dirs(root)
    split_dirs = [s for s in SPLITS if s in top]
    if not split_dirs:
        return [("", label, p) for label, p in top.items()]
    strays = sorted(set(top) - set(SPLITS))
    if strays:
        raise DatasetError(
            f"{root} mixes the split layout (train/, test/) with class folders at the top {strays}: "
            "put every class under train/ or test/"
        )
    found: list[tuple[Split, str, Path]] = []
    for split in split_dirs:
        found += [(split, label, p) for label, p in _class_dirs(root / split).items()]  # type: ignore[misc]
    return found


def _files(folder: Path, root: Path, ignored: list[str]) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.name in NOT_DATA_FILES:
            continue
        if any(part in NOT_CLASSES for part in p.relative_to(root).parts[:-1]):
            continue
        if p.suffix.lower() == ".json" and p.with_suffix(".png").is_file():
            continue  # the sidecar `lineguard capture` writes beside each frame: metadata, not data
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append(p.relative_to(root).as_posix())
            continue
        out.append(p)
    return out


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable:{exc.strerror}"


def fingerprint(entries: list[tuple[str, str]]) -> str:
    """sha256 over ``rel \\0 file_sha256 \\n`` of every file, sorted by relative path."""
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


@dataclass
class _Scan:
    samples: list[Sample] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)
    hashes: list[tuple[str, str]] = field(default_factory=list)
    formats: dict[str, tuple[int, str, bool, tuple[int, int]]] = field(default_factory=dict)


def _scan_files(root: Path, folders: list[tuple[Split, str, Path]], warnings: list[str]) -> _Scan:
    scan = _Scan()
    ignored: list[str] = []
    for split, label, folder in folders:
        files = _files(folder, root, ignored)
        if not files:
            where = folder.relative_to(root).as_posix()
            if label == GOOD:
                raise DatasetError(f"{root}: class folder {where}/ holds no images; add good images")
            warnings.append(f"class folder {where}/ is empty: class {label!r} not used from there")
        for p in files:
            rel = p.relative_to(root).as_posix()
            scan.hashes.append((rel, _file_sha256(p)))
            try:
                img = read_image(p)
            except ImageError as exc:
                scan.bad.append(BadFile(rel=rel, reason=str(exc).removeprefix(f"{p}: ")))
                continue
            ch = 1 if img.ndim == 2 else 3
            scan.formats[rel] = (ch, str(img.dtype), ch == 3 and is_grey_rgb(img), (img.shape[1], img.shape[0]))
            scan.samples.append(Sample(path=p, rel=rel, label=label, split=split))
    if ignored:
        warnings.append(f"{len(ignored)} non-image files ignored, e.g. {ignored[:3]}")
    return scan


def _pixel_format(root: Path, scan: _Scan, warnings: list[str]) -> tuple[Literal[1, 3], str, bool]:
    """(channels, dtype, mono_from_rgb) shared by every image, or a DatasetError saying why not."""
    dtypes = Counter(f[1] for f in scan.formats.values())
    if len(dtypes) > 1:
        examples = {d: next(r for r, f in scan.formats.items() if f[1] == d) for d in dtypes}
        raise DatasetError(
            f"{root}: images mix bit depths {dict(dtypes)} (e.g. {examples}); one camera delivers one format"
        )
    colour = [r for r, f in scan.formats.items() if f[0] == 3]
    true_colour = [r for r in colour if not scan.formats[r][2]]
    mono = [r for r, f in scan.formats.items() if f[0] == 1]
    if true_colour and mono:
        raise DatasetError(
            f"{root}: images mix mono ({len(mono)}, e.g. {mono[0]}) and colour ({len(true_colour)}, "
            f"e.g. {true_colour[0]}); one camera delivers one format: convert or separate them"
        )
    if colour and not true_colour:
        msg = f"all {len(colour)} colour files have identical R, G, B channels: dataset treated as mono"
        log.info("%s", msg)
        warnings.append(msg)
        return 1, dtypes.most_common(1)[0][0], True
    return (3 if colour else 1), dtypes.most_common(1)[0][0], False


def scan_dataset(root: str | Path, *, allow_unreadable: bool = False, require_good: bool = True) -> Dataset:
    """Discover, decode and validate every image under ``root``.

    Raises :class:`DatasetError` when there is no good folder, no good image, mixed pixel formats,
    or (unless ``allow_unreadable``) any unreadable or empty file, listing every such path.
    ``require_good=False`` (re-calibration with new defect images only) accepts a dataset without
    good images.
    """
    root = Path(root)
    folders = _discover(root)
    if require_good and not any(label == GOOD for _, label, _ in folders):
        found = sorted({f"{s}/{label}" if s else label for s, label, _ in folders})
        raise DatasetError(f"{root}: no '{GOOD}' folder (found {found or 'no class folders'}); see docs/training.md")
    warnings: list[str] = []
    scan = _scan_files(root, folders, warnings)
    if scan.bad:
        listing = "; ".join(f"{b.rel} ({b.reason})" for b in scan.bad)
        if not allow_unreadable:
            raise DatasetError(
                f"{root}: {len(scan.bad)} unreadable or empty image files: {listing}. "
                "Fix or remove them, or pass --skip-unreadable to train without them (they are listed in the report)"
            )
        log.warning("skipping %d unreadable image files: %s", len(scan.bad), listing)
        warnings.append(f"{len(scan.bad)} unreadable files skipped: {listing}")
    good = [s for s in scan.samples if s.label == GOOD]
    if require_good and not good:
        raise DatasetError(f"{root}: no readable good images")
    if not scan.samples:
        raise DatasetError(f"{root}: no readable images")
    channels, dtype, mono_from_rgb = _pixel_format(root, scan, warnings)
    sizes = tuple(sorted({f[3] for f in scan.formats.values()}))
    if len(sizes) > 1:
        warnings.append(f"images have {len(sizes)} different sizes, e.g. {list(sizes[:3])}: frame size left open")
    classes = tuple(sorted({s.label for s in scan.samples if s.label != GOOD}))
    fit_only = _read_fit_only(root, scan.samples)
    hashes = scan.hashes + ([(FIT_ONLY_FILE, _file_sha256(root / FIT_ONLY_FILE))] if fit_only else [])
    for w in warnings:
        if "treated as mono" not in w:  # that one is information, already logged
            log.warning("dataset %s: %s", root, w)
    return Dataset(
        root=root,
        samples=tuple(scan.samples),
        defect_classes=classes,
        channels=channels,
        dtype="uint16" if dtype == "uint16" else "uint8",
        mono_from_rgb=mono_from_rgb,
        fingerprint=fingerprint(hashes),
        skipped=tuple(scan.bad),
        warnings=tuple(warnings),
        sizes=sizes,
        fit_only=fit_only,
    )


def _read_fit_only(root: Path, samples: list[Sample]) -> frozenset[str]:
    """The rel paths ``<root>/fit_only.txt`` lists (blank lines and ``#`` comments skipped).

    Raises :class:`DatasetError` when an entry is not a good *training* image of this dataset: a
    typo or a stale list would otherwise put a score-selected image into calibration unnoticed.
    """
    path = root / FIT_ONLY_FILE
    if not path.is_file():
        return frozenset()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read it ({exc}); fix or remove the file") from exc
    listed = {ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")}
    trainable = {s.rel for s in samples if s.label == GOOD and s.split in ("train", "")}
    unknown = sorted(listed - trainable)
    if unknown:
        raise DatasetError(f"{path} lists {len(unknown)} files that are not good training images of this dataset "
                           f"(good/ or train/good/): {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
                           "correct or remove those lines")
    return frozenset(listed)
