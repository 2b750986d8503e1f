"""Synthetic source: deterministic textured frames, defects, pacing, part ids."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lineguard.sources.synthetic import SyntheticSource


def _frames(**kw: object) -> list:
    with SyntheticSource(camera_id="s", width=64, height=48, **kw) as src:  # type: ignore[arg-type]
        return list(src.frames(timeout_s=1.0))


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    a = _frames(seed=7, num_frames=5, defect_rate=0.5)
    b = _frames(seed=7, num_frames=5, defect_rate=0.5)
    c = _frames(seed=8, num_frames=5, defect_rate=0.5)
    assert len(a) == 5
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.image, fb.image)
        assert fa.source_ref == fb.source_ref
    assert any(not np.array_equal(fa.image, fc.image) for fa, fc in zip(a, c, strict=True))


def test_frames_are_textured_not_flat_and_differ_between_parts() -> None:
    f0, f1 = _frames(num_frames=2)
    assert f0.image.std() > 5.0  # a texture, not a constant
    assert not np.array_equal(f0.image, f1.image)
    assert f0.image.shape == (48, 64) and f0.image.dtype == np.uint8


def test_defect_rate_and_defects_are_visible() -> None:
    src = SyntheticSource(camera_id="s", width=128, height=128, defect_rate=0.3, seed=3, num_frames=300)
    with src:
        frames = list(src.frames())
    defective = [f for f in frames if "defect=" in f.source_ref]
    assert 0.2 < len(defective) / len(frames) < 0.4
    kinds = {f.source_ref.rsplit("=", 1)[1] for f in defective}
    assert kinds == {"scratch", "blob"}
    # A defect changes the picture well beyond sensor noise: compare with the good-part mean.
    good = np.mean([f.image.astype(float) for f in frames if "defect=" not in f.source_ref], axis=0)
    diff_def = np.mean([np.abs(f.image - good).max() for f in defective])
    diff_good = np.mean([np.abs(f.image - good).max() for f in frames[:20] if "defect=" not in f.source_ref])
    assert diff_def > diff_good + 40


def test_rgb_and_16_bit_output() -> None:
    (rgb,) = _frames(num_frames=1, channels=3)
    assert rgb.image.shape == (48, 64, 3) and rgb.image.dtype == np.uint8
    assert not np.array_equal(rgb.image[..., 0], rgb.image[..., 2])
    src = SyntheticSource(camera_id="s", width=64, height=48, bit_depth=12, num_frames=1)
    with src:
        frame = src.read(1.0)
        assert src.info is not None and src.info.max_value == 4095
    assert frame is not None and frame.image.dtype == np.uint16
    assert 255 < int(frame.image.max()) <= 4095


def test_finite_source_finishes() -> None:
    src = SyntheticSource(camera_id="s", width=32, height=32, num_frames=3)
    with src:
        assert [f.seq for f in src.frames()] == [0, 1, 2]
        assert src.finished
        assert src.read(0.01) is None
        assert src.stats.snapshot().frames == 3


def test_rate_is_kept() -> None:
    src = SyntheticSource(camera_id="s", width=32, height=32, rate_parts_per_s=50.0, num_frames=11)
    with src:
        t0 = time.monotonic()
        frames = list(src.frames())
        elapsed = time.monotonic() - t0
    assert len(frames) == 11
    assert 0.18 < elapsed < 1.0  # 10 periods of 20 ms (the upper bound leaves room for a loaded machine)
    gaps = np.diff([f.t_capture_ns for f in frames]) / 1e6
    assert gaps.min() > 15.0


def test_read_returns_none_within_its_timeout_when_no_slot_is_due() -> None:
    src = SyntheticSource(camera_id="s", width=32, height=32, rate_parts_per_s=2.0)
    with src:
        assert src.read(1.0) is not None  # first slot is due at once
        t0 = time.monotonic()
        assert src.read(0.05) is None
        assert time.monotonic() - t0 < 0.2
        assert src.stats.snapshot().timeouts == 1


def test_skip_policy_drops_missed_slots_and_counts_them() -> None:
    src = SyntheticSource(camera_id="s", width=32, height=32, rate_parts_per_s=100.0, late_policy="skip")
    with src:
        first = src.read(1.0)
        time.sleep(0.105)  # about 10 slots pass unread
        second = src.read(1.0)
    assert first is not None and second is not None
    dropped = src.stats.snapshot().dropped
    assert 8 <= dropped <= 12
    # the missed slots are parts too: each gets a missing_frame (fail-safe downstream), in order
    assert second.seq == 1 and second.fault == "missing_frame" and second.frame_id == 1
    rest = [src.read(1.0) for _ in range(dropped)]
    assert [f.fault for f in rest if f is not None][-1] == ""
    image = rest[-1]
    assert image is not None and image.source_ref == f"synthetic:k={1 + dropped}" and image.seq == 1 + dropped


def test_keep_policy_never_drops() -> None:
    src = SyntheticSource(camera_id="s", width=32, height=32, rate_parts_per_s=100.0, late_policy="keep")
    with src:
        src.read(1.0)
        time.sleep(0.1)
        src.read(1.0)
        src.read(1.0)
    assert src.stats.snapshot().dropped == 0


def test_part_id_hook_and_stop_event() -> None:
    stop = threading.Event()
    src = SyntheticSource(camera_id="line3", width=32, height=32, part_id_fn=lambda seq: 1000 + 2 * seq)
    seen = []
    with src:
        for frame in src.frames(stop=stop):
            seen.append(frame)
            if len(seen) == 3:
                stop.set()
    assert [f.part_id for f in seen] == [1000, 1002, 1004]
    assert {f.camera_id for f in seen} == {"line3"}


def test_default_part_ids_count_from_one() -> None:
    assert [f.part_id for f in _frames(num_frames=3)] == [1, 2, 3]


def test_read_before_open_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="before open"):
        SyntheticSource(camera_id="s", width=32, height=32).read(0.1)


def test_stats_deltas_feed_counters() -> None:
    src = SyntheticSource(camera_id="s", width=32, height=32, num_frames=5)
    with src:
        before = src.stats.snapshot()
        src.read(1.0)
        src.read(1.0)
        delta = src.stats.snapshot().counts_since(before)
    assert delta["frames"] == 2 and delta["reconnects"] == 0 and delta["dropped"] == 0
