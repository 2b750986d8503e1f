"""GenICam read loop on the paths viky cannot produce on its own: incomplete and unusable buffers
(each is its part: an incomplete_frame fault frame under its frame id), id gaps and counter resets
at exact places, camera timestamps. A small fake acquirer with harvesters' try_fetch/Buffer semantics stands in
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


def _source(script: list[Any], **cfg: Any) -> GenICamSource:
    src = GenICamSource(cfg=GenICamSourceConfig(type="genicam", cti_path=str(Path(__file__)), **cfg))
    # Wire the fake where open() would put harvesters' acquirer (the device part is tested
    # against viky in tests/integration/test_sources_genicam.py).
    src._ia = FakeAcquirer(script, src._incomplete.emit)
    src._closed = False
    return src


def _buf(frame_id: int) -> FakeBuffer:
    return FakeBuffer(np.arange(8, dtype=np.uint8), frame_id=frame_id)


def _read_all(src: GenICamSource, n: int) -> list[Any]:
    frames = [src.read(0.05) for _ in range(n)]
    assert all(f is not None for f in frames), frames
    return frames


def test_incomplete_buffers_are_parts_with_a_fault_under_the_next_id() -> None:
    good = _buf(3)
    src = _source([_buf(1), "incomplete", good])
    frames = _read_all(src, 3)
    # the fake cannot say which id harvesters discarded: the next expected one (2) is taken
    assert [(f.frame_id, f.fault, f.part_id) for f in frames] == [(1, "", 1), (2, "incomplete_frame", 2), (3, "", 3)]
    assert frames[1].image.size == 0 and frames[2].image.shape == (2, 4) and frames[2].image[1, 3] == 7
    assert good.queued and frames[2].camera_timestamp_ns == 3_000_000
    assert src.stats.snapshot().incomplete == 1


def test_only_incomplete_buffers_each_return_a_fault_frame_at_once() -> None:
    src = _source([_buf(1), *["incomplete"] * 3])
    t0 = time.monotonic()
    frames = _read_all(src, 4)
    assert time.monotonic() - t0 < 0.5
    assert [f.fault for f in frames[1:]] == ["incomplete_frame"] * 3 and [f.frame_id for f in frames] == [1, 2, 3, 4]
    assert src.read(0.05) is None and src.stats.snapshot().timeouts == 1


def test_unusable_buffer_is_queued_back_and_answered_under_its_own_id() -> None:
    short = FakeBuffer(np.zeros(3, np.uint8), frame_id=1)  # 4x2 needs 8 values
    good = _buf(2)
    src = _source([short, good])
    first, second = _read_all(src, 2)
    assert short.queued and good.queued
    assert (first.frame_id, first.fault, first.part_id) == (1, "incomplete_frame", 1)
    assert first.fault_detail == "Mono8 buffer holds 3 values, 4x2 needs 8"
    assert (second.frame_id, second.fault, second.part_id) == (2, "", 2)
    assert src.stats.snapshot().incomplete == 1


def test_frame_id_gaps_become_missing_frames_and_ids_never_shift() -> None:
    src = _source([_buf(i) for i in (1, 2, 6, 7)])
    frames = _read_all(src, 7)
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 5, 6, 7]
    assert [f.part_id for f in frames] == [1, 2, 3, 4, 5, 6, 7]
    assert [f.fault for f in frames] == ["", "", "missing_frame", "missing_frame", "missing_frame", "", ""]
    assert src.stats.snapshot().dropped == 3


def test_a_gap_beyond_the_bound_answers_the_newest_and_counts_the_rest() -> None:
    src = _source([_buf(1), _buf(12)], max_gap_failsafes=4)
    frames = _read_all(src, 6)
    # 10 ids missing: the 4 newest get a fail-safe, 6 are counted; part ids still follow the ids
    assert [(f.frame_id, f.part_id, f.fault) for f in frames[1:]] == [
        (8, 8, "missing_frame"), (9, 9, "missing_frame"), (10, 10, "missing_frame"), (11, 11, "missing_frame"),
        (12, 12, ""),
    ]
    stats = src.stats.snapshot()
    assert stats.dropped == 10 and stats.gap_excess == 6


def test_counter_reset_is_a_new_baseline_not_thousands_of_failsafes() -> None:
    src = _source([_buf(5000), _buf(5001), _buf(1), _buf(2)])
    frames = _read_all(src, 4)
    assert [f.fault for f in frames] == ["", "", "", ""]
    assert [f.part_id for f in frames] == [1, 2, 3, 4]
    stats = src.stats.snapshot()
    assert stats.id_resets == 1 and stats.dropped == 0
