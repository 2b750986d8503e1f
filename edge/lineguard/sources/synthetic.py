"""Synthetic source: textured frames with optional rendered defects, for smoke tests and demos.

Where it sits: a stand-in for the camera at the head of the edge pipeline when neither a camera
nor an image folder is at hand. Frame ``k`` depends only on (seed, k), so two runs with the same
seed see the same parts in the same order, whatever the consumer's speed. A defective frame says
so in ``source_ref`` (``synthetic:k=12:defect=scratch``) so a smoke test can score the pipeline.
``Frame.frame_id`` is ``k``; slots a slow consumer missed under ``late_policy: skip`` are ids that
never arrived and become ``missing_frame`` fault frames (fail-safe), as a camera's dropped buffers do.

Never: take wall-clock time or global random state into the image content.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from lineguard.contracts import Frame
from lineguard.sources.base import BaseSource, Pacer, PartIdFn, SourceInfo
from lineguard.sources.config import SyntheticSourceConfig

_MARGIN = 8  # texture border that lets each frame be a slightly shifted crop (parts never sit still)


class SyntheticSource(BaseSource):
    """Generates a brushed-metal-like texture per frame; some frames get a scratch or a blob."""

    def __init__(
        self,
        *,
        camera_id: str,
        width: int,
        height: int,
        channels: int = 1,
        bit_depth: int = 8,
        rate_parts_per_s: float | None = None,
        defect_rate: float = 0.0,
        seed: int = 0,
        num_frames: int | None = None,
        late_policy: str = "keep",
        part_id_fn: PartIdFn | None = None,
    ) -> None:
        super().__init__(camera_id=camera_id, part_id_fn=part_id_fn)
        self._width = width
        self._height = height
        self._channels = channels
        self._max = 255 if bit_depth == 8 else 2**bit_depth - 1
        self._dtype = np.uint8 if bit_depth == 8 else np.uint16
        self._defect_rate = defect_rate
        self._seed = seed
        self._num_frames = num_frames
        self._pacer = Pacer(rate_per_s=rate_parts_per_s, late_policy=late_policy)
        self._texture: np.ndarray | None = None
        self._k = 0  # index of the next generated frame (frames skipped by the pacer included)

    @classmethod
    def from_config(cls, cfg: SyntheticSourceConfig, *, part_id_fn: PartIdFn | None = None) -> SyntheticSource:
        return cls(
            camera_id=cfg.camera_id,
            width=cfg.width,
            height=cfg.height,
            channels=cfg.channels,
            bit_depth=cfg.bit_depth,
            rate_parts_per_s=cfg.rate_parts_per_s,
            defect_rate=cfg.defect_rate,
            seed=cfg.seed,
            num_frames=cfg.num_frames,
            late_policy=cfg.late_policy,
            part_id_fn=part_id_fn,
        )

    def open(self) -> None:
        self._ids.start_at(self._k)
        self._texture = _texture(self._width + 2 * _MARGIN, self._height + 2 * _MARGIN, self._seed)
        self._info = SourceInfo(
            camera_id=self.camera_id,
            width=self._width,
            height=self._height,
            channels=self._channels,
            dtype=np.dtype(self._dtype).name,
            max_value=self._max,
            description=f"synthetic seed {self._seed}, defect rate {self._defect_rate:g}",
        )
        self.stats.set_connected(True)

    def close(self) -> None:
        self._texture = None
        self.stats.set_connected(False)

    def _read(self, timeout_s: float) -> Frame | None:
        if self._texture is None:
            raise RuntimeError("SyntheticSource.read() before open()")
        if self._num_frames is not None and self._k >= self._num_frames:
            self._finished = True
            return None
        skipped = self._pacer.wait(timeout_s)
        if skipped is None:
            self.stats.add(timeouts=1)
            return None
        if skipped:
            # the gap before the next frame id answers them (missing_frame), counted as dropped
            self._k += skipped
            if self._num_frames is not None and self._k >= self._num_frames:
                self._finished = True
                return self._end_of_stream(self._num_frames)
        t_capture_ns = time.monotonic_ns()
        image, defect = self.render(self._k)
        ref = f"synthetic:k={self._k}" + (f":defect={defect}" if defect else "")
        self._k += 1
        return self._emit(image, t_capture_ns=t_capture_ns, source_ref=ref, frame_id=self._k - 1)

    def render(self, k: int) -> tuple[np.ndarray, str]:
        """Frame ``k`` and its defect kind ("" for a good part); pure function of (seed, k)."""
        assert self._texture is not None
        rng = np.random.default_rng([self._seed, k])
        dx, dy = (int(v) for v in rng.integers(0, 2 * _MARGIN + 1, size=2))
        base = self._texture[dy : dy + self._height, dx : dx + self._width]
        # Sensor noise, kept small so that good parts stay good for an anomaly model.
        noise = rng.integers(-3, 4, size=base.shape, dtype=np.int16)
        img = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        defect = ""
        if self._defect_rate > 0.0 and rng.random() < self._defect_rate:
            defect = _draw_defect(img, rng)
        if self._channels == 3:
            # A faint tint so colour pipelines see three different channels.
            img = np.stack([img, np.clip(img.astype(np.int16) - 6, 0, 255).astype(np.uint8), img // 2 + 40], -1)
        if self._dtype == np.uint16:
            return (img.astype(np.uint32) * self._max // 255).astype(np.uint16), defect
        return img, defect


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    """A brushed-metal-like texture: horizontal streaks over a smooth illumination gradient."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, size=(height, width)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=9.0, sigmaY=0.8)
    streaks = blurred * np.float32(12.0 / max(float(blurred.std()), 1e-6))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 120.0 + 30.0 * np.cos((xx / width - 0.5) * np.pi) + 10.0 * (yy / height)
    texture: np.ndarray = np.clip(light + streaks, 0, 255).astype(np.uint8)
    return texture


def _draw_defect(img: np.ndarray, rng: np.random.Generator) -> str:
    """Render a scratch (thin bright line) or a blob (dark stain) in place; returns its kind."""
    h, w = img.shape
    if rng.random() < 0.5:
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        length = int(rng.integers(max(8, min(h, w) // 6), max(9, min(h, w) // 2)))
        angle = float(rng.uniform(0.0, np.pi))
        x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
        cv2.line(img, (x0, y0), (x1, y1), color=235, thickness=max(1, min(h, w) // 160), lineType=cv2.LINE_AA)
        return "scratch"
    cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
    radius = int(rng.integers(max(3, min(h, w) // 40), max(4, min(h, w) // 12)))
    cv2.circle(img, (cx, cy), radius, color=40, thickness=-1, lineType=cv2.LINE_AA)
    return "blob"
