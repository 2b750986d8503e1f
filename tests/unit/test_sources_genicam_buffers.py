"""GenICam read loop on the paths viky cannot produce: incomplete and unusable buffers,
camera timestamps. A small fake acquirer with harvesters' try_fetch/Buffer semantics stands in
(harvesters queues an incomplete buffer itself, fires INCOMPLETE_BUFFER and returns None)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("harvesters.core", reason="harvesters is not installed")

from lineguard.sources import GenICamSourceConfig
from lineguard.sources.genicam import GenICamSource


class FakeModule:
    def __init__(self, frame_id: int, timestamp_ns: int) -> None:
        self.frame_id = frame_id
        self.timestamp_ns = timestamp_ns


class FakeComponent:
    def __init__(self, data: np.ndarray, width: int, height: int) -> None:
        self.data, self.width, self.height, self.data_format = data, width, height, "Mono8"


class FakePayload:
    def __init__(self, components: list[FakeComponent]) -> None:
        self.components = components


class FakeBuffer:
    def __init__(self, data: np.ndarray, *, frame_id: int, width: int = 4, height: int = 2) -> None:
        self.payload = FakePayload([FakeComponent(data, width, height)])
        self.module = FakeModule(frame_id, timestamp_ns=1_000_000 * frame_id)
        self.queued = False

    def __enter__(self) -> FakeBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.queued = True  # harvesters' Buffer.__exit__ queues the buffer back


class FakeAcquirer:
    """Plays a script: a FakeBuffer, "incomplete" or "timeout" per try_fetch call."""

    def __init__(self, script: list[Any], on_incomplete: Callable[[], None]) -> None:
        self.script = list(script)
        self.on_incomplete = on_incomplete

    def try_fetch(self, *, timeout: float) -> FakeBuffer | None:
        step = self.script.pop(0) if self.script else "timeout"
        if step == "incomplete":
            self.on_incomplete()
            return None
        if step == "timeout":
            time.sleep(timeout)
            return None
        assert isinstance(step, FakeBuffer)
        return step


def _source(script: list[Any]) -> GenICamSource:
    src = GenICamSource(cfg=GenICamSourceConfig(type="genicam", cti_path=str(Path(__file__))))
    # Wire the fake where open() would put harvesters' acquirer (the device part is tested
    # against viky in tests/integration/test_sources_genicam.py).
    src._ia = FakeAcquirer(script, src._incomplete.emit)
    src._closed = False
    return src


def test_incomplete_buffers_are_counted_and_skipped_within_one_read() -> None:
    good = FakeBuffer(np.arange(8, dtype=np.uint8), frame_id=3)
    src = _source(["incomplete", "incomplete", good])
    frame = src.read(1.0)
    assert frame is not None and frame.image.shape == (2, 4) and frame.image[1, 3] == 7
    assert good.queued
    assert src.stats.snapshot().incomplete == 2
    assert frame.camera_timestamp_ns == 3_000_000


def test_only_incomplete_buffers_still_end_at_the_timeout() -> None:
    src = _source(["incomplete"] * 10_000)
    t0 = time.monotonic()
    assert src.read(0.05) is None
    assert time.monotonic() - t0 < 0.5
    stats = src.stats.snapshot()
    assert stats.incomplete > 0 and stats.timeouts == 1


def test_unusable_buffer_is_queued_back_counted_and_skipped() -> None:
    short = FakeBuffer(np.zeros(3, np.uint8), frame_id=1)  # 4x2 needs 8 values
    good = FakeBuffer(np.ones(8, np.uint8), frame_id=2)
    src = _source([short, good])
    frame = src.read(1.0)
    assert frame is not None and short.queued and good.queued
    assert src.stats.snapshot().incomplete == 1


def test_frame_id_gaps_are_counted_as_dropped() -> None:
    bufs = [FakeBuffer(np.ones(8, np.uint8), frame_id=i) for i in (1, 2, 6, 7)]
    src = _source(list(bufs))
    frames = [src.read(1.0) for _ in bufs]
    assert all(f is not None for f in frames)
    assert src.stats.snapshot().dropped == 3
