"""Replay source: image files played back as a camera stream.

Where it sits: at the head of the edge pipeline instead of a camera, for demos, benchmarks and
repeatable tests. Files are read with OpenCV ``IMREAD_UNCHANGED``: mono stays HxW, colour becomes
HxWx3 in RGB order (alpha dropped), 16-bit stays uint16.

Identity: each file is one part. ``Frame.frame_id`` is the file's position in the replayed stream
(0-based, counting on across loop passes; position in the list = frame_id % len(files)); the
source counts every file as a part (``part_id = part_id_fn(seq)``, by default position + 1), so a
bad file never shifts the parts after it. A file that does not decode is still its part: it is delivered as an
``unreadable_frame`` fault frame (empty image; the service answers it with the fail-safe at once),
counted (``stats.unreadable``), logged with its path and remembered in ``stats.unreadable_paths``.
Slots a slow consumer missed under ``late_policy: skip`` become ``missing_frame`` fault frames,
like the dropped buffers of a camera. A part whose image cannot be judged (wrong size, say) is
delivered as it is: judging it is the decision stage's job.

Never: stop the stream for one bad file, skip a file without a frame for it, or convert pixel
values (no scaling, no bit shifting).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lineguard.contracts import Frame
from lineguard.errors import ImageError, SourceError
from lineguard.sources.base import BaseSource, Pacer, PartIdFn, SourceInfo
from lineguard.sources.config import ReplaySourceConfig
from lineguard.sources.identity import UNREADABLE_FRAME
from lineguard.sources.partwarn import PartWarnings

log = logging.getLogger(__name__)


def list_images(paths: Sequence[str | Path], *, recursive: bool, extensions: Sequence[str]) -> list[Path]:
    """Expand folders into their image files (sorted by path); files are kept as given, in order."""
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = entry.rglob("*") if recursive else entry.iterdir()
            files.extend(sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes))
        elif entry.is_file():
            files.append(entry)
        else:
            raise SourceError(f"replay path {str(entry)!r} does not exist; fix source.paths in the config")
    return files


def decode_image(path: Path) -> np.ndarray:
    """Read one file as a Frame image; raises ImageError with the reason when it cannot."""
    # np.fromfile + imdecode instead of imread: same decoder, but the read error and the
    # decode error become distinguishable for the operator.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageError(f"cannot decode {path} ({data.size} bytes): not an image or truncated")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path} has pixel type {image.dtype}; only 8- and 16-bit images are replayed")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        if image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        else:
            raise ImageError(f"{path} has {image.shape[2]} channels; 1, 3 or 4 are replayed")
    return np.ascontiguousarray(image)


class ReplaySource(BaseSource):
    """Plays a fixed list of image files, once or in a loop, paced or as fast as possible."""

    def __init__(
        self,
        *,
        camera_id: str,
        files: Sequence[Path],
        rate_parts_per_s: float | None = None,
        loop: bool = False,
        late_policy: str = "keep",
        part_id_fn: PartIdFn | None = None,
    ) -> None:
        super().__init__(camera_id=camera_id, part_id_fn=part_id_fn)
        if not files:
            raise SourceError("replay source has no image files; check source.paths and extensions")
        self._files = list(files)
        self._loop = loop
        self._rate = rate_parts_per_s
        self._late_policy = late_policy
        self._pacer = Pacer(rate_per_s=rate_parts_per_s, late_policy=late_policy)
        self._index = 0
        self._position = 0  # frame_id of the next file: its position in the stream, across passes
        self._good_in_pass = 0  # readable files seen in the current pass (detects all-bad lists)
        self._opened = False
        self._warnings = PartWarnings(log, "unreadable replay files")  # a broken folder is not a log flood

    @classmethod
    def from_config(cls, cfg: ReplaySourceConfig, *, part_id_fn: PartIdFn | None = None) -> ReplaySource:
        """Lists the files now, so a wrong path fails at start-up, not at the first part."""
        files = list_images(cfg.paths, recursive=cfg.recursive, extensions=cfg.extensions)
        return cls(
            camera_id=cfg.camera_id,
            files=files,
            rate_parts_per_s=cfg.rate_parts_per_s,
            loop=cfg.loop,
            late_policy=cfg.late_policy,
            part_id_fn=part_id_fn,
        )

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def open(self) -> None:
        self._index = 0
        self._position = 0
        self._ids.start_at(0)
        self._pending.clear()
        self._good_in_pass = 0
        self._finished = False
        self._pacer = Pacer(rate_per_s=self._rate, late_policy=self._late_policy)
        self._info = self._probe_info()
        self._opened = True
        self.stats.set_connected(True)

    def close(self) -> None:
        self._opened = False
        self.stats.set_connected(False)
        self._warnings.flush()

    def _read(self, timeout_s: float) -> Frame | None:
        if not self._opened:
            raise RuntimeError("ReplaySource.read() before open()")
        if self._finished:
            return None
        skipped = self._pacer.wait(timeout_s)
        if skipped is None:
            self.stats.add(timeouts=1)
            return None
        for _ in range(skipped):  # slots that passed unread: the gap before the next file says so
            if not self._advance():
                return self._end_of_stream(self._position)
        # One file per slot, readable or not; a full pass of bad files in a loop ends in an error.
        if self._index >= len(self._files) and not self._wrap():
            return None
        path = self._files[self._index]
        position = self._position
        self._index += 1
        self._position += 1
        t_capture_ns = time.monotonic_ns()
        try:
            image = decode_image(path)
        except ImageError as exc:
            self.stats.add(unreadable=1)
            self.stats.unreadable_paths.append((str(path), str(exc)))
            self._warnings.warn("replay: part at position %d is unreadable, fail-safe: %s", position, exc)
            return self._emit_fault(UNREADABLE_FRAME, t_capture_ns=t_capture_ns, frame_id=position,
                                    source_ref=str(path), detail=str(exc))
        self._good_in_pass += 1
        return self._emit(image, t_capture_ns=t_capture_ns, source_ref=str(path), frame_id=position)

    def _advance(self) -> bool:
        """Skip one file (a missed slot); False when the list ended (and does not loop)."""
        if self._index >= len(self._files) and not self._wrap():
            return False
        self._index += 1
        self._position += 1
        self._good_in_pass += 1  # a skipped slot is not evidence of a bad list
        return True

    def _wrap(self) -> bool:
        """At the end of the list: start over (loop) or finish. False when finished."""
        if not self._loop:
            self._finished = True
            return False
        if self._good_in_pass == 0:
            self._finished = True
            raise SourceError(
                f"replay: none of the {len(self._files)} files decodes; "
                f"last errors: {list(self.stats.unreadable_paths)[-3:]}"
            )
        self._index = 0
        self._good_in_pass = 0
        return True

    def _probe_info(self) -> SourceInfo | None:
        """Geometry from the first readable file, or None when the files differ in shape."""
        shapes: set[tuple[int, ...]] = set()
        first: np.ndarray | None = None
        # Probing every file would read the whole folder at start-up; three are enough to warn.
        for path in self._files[:3]:
            try:
                image = decode_image(path)
            except ImageError:
                continue
            first = image if first is None else first
            shapes.add((*image.shape, image.itemsize))
        if first is None or len(shapes) != 1:
            return None
        return SourceInfo(
            camera_id=self.camera_id,
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            channels=1 if first.ndim == 2 else 3,
            dtype=first.dtype.name,
            max_value=255 if first.dtype == np.uint8 else 65535,
            description=f"replay of {len(self._files)} files",
        )
