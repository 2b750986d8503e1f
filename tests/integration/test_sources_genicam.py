"""GenICam source against the real viky.cti GenTL simulator (inside the genicam wheel).

What viky offers (checked with ``lineguard cameras --cti viky --features``): three devices
(serials 0/1/2, model "Viky", a red/green/blue bouncing ball on white), PixelFormat Mono8 or
RGBa8, Width/Height 100..800, AcquisitionFrameRate 1..200 Hz, frame ids, no timestamps, and no
OffsetX/OffsetY, ExposureTime, Gain or TriggerMode. Those missing features are tested for the
loud refusal the source must give; their working path is covered in hil/test_camera_hil.py.

harvesters and the producer live in this process: a second Harvester sees no devices while one
is loaded, so the autouse fixture checks after every test that the producer was released.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("harvesters.core", reason="harvesters is not installed")

from lineguard.cli import main as cli_main
from lineguard.errors import SourceError
from lineguard.sources import GenICamSourceConfig, build_source
from lineguard.sources.genicam import GenICamSource, list_devices, viky_cti_path

VIKY = viky_cti_path()
pytestmark = pytest.mark.skipif(VIKY is None, reason="viky.cti is not inside this genicam wheel")


@pytest.fixture(autouse=True)
def producer_released() -> Iterator[None]:
    yield
    # Fails if a test (or the source) left the producer loaded or a device open.
    assert len(list_devices(str(VIKY))) == 3, "the GenTL producer was left open by the test"


@pytest.fixture()
def sources() -> Iterator[list[GenICamSource]]:
    made: list[GenICamSource] = []
    yield made
    for src in made:
        src.close()


def _source(made: list[GenICamSource], **kw: Any) -> GenICamSource:
    cfg = GenICamSourceConfig(type="genicam", cti_path=kw.pop("cti_path", str(VIKY)), **kw)
    src = build_source(cfg)
    assert isinstance(src, GenICamSource)
    made.append(src)
    return src


def _read_n(src: GenICamSource, n: int, timeout_s: float = 2.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout_s * n
    while len(frames) < n and time.monotonic() < deadline:
        frame = src.read(timeout_s)
        if frame is not None:
            frames.append(frame)
    return frames


def test_lists_the_three_simulated_devices() -> None:
    devices = list_devices(str(VIKY))
    assert [(d.model, d.serial) for d in devices] == [("Viky", "0"), ("Viky", "1"), ("Viky", "2")]
    assert all(d.vendor for d in devices)


@pytest.mark.parametrize(("serial", "model", "expected"), [("2", None, "2"), (None, "Viky", "0"), (None, None, "0")])
def test_device_chosen_by_serial_model_or_first(
    sources: list[GenICamSource], serial: str | None, model: str | None, expected: str
) -> None:
    src = _source(sources, serial=serial, model=model)
    src.open()
    assert src.device is not None and src.device.serial == expected
    assert src.info is not None and expected in src.info.description


def test_unknown_serial_names_the_devices_that_are_there(sources: list[GenICamSource]) -> None:
    src = _source(sources, serial="12345")
    with pytest.raises(SourceError, match=r"serial='12345'.*Viky serial 0"):
        src.open()


def test_mono8_roi_frames(sources: list[GenICamSource]) -> None:
    src = _source(sources, pixel_format="Mono8", width=320, height=240, frame_rate_hz=200)
    src.open()
    t_before = time.monotonic_ns()
    frames = _read_n(src, 5)
    assert src.info is not None and (src.info.width, src.info.height, src.info.channels) == (320, 240, 1)
    assert src.info.max_value == 255
    assert len(frames) == 5
    for f in frames:
        assert f.image.shape == (240, 320) and f.image.dtype == np.uint8
        assert f.image.flags.owndata or f.image.base is not None  # an owned copy (see pixels tests)
        assert f.camera_timestamp_ns is None  # viky has no timestamps (GetBufferInfo: not supported)
        assert f.camera_id == "cam0"
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [f.part_id for f in frames] == [1, 2, 3, 4, 5]
    stamps = [f.t_capture_ns for f in frames]
    assert t_before < stamps[0] and stamps == sorted(stamps)
    assert frames[0].image.min() < 128 < frames[0].image.max()  # ball on white, not a blank frame


@pytest.mark.parametrize(("serial", "channel"), [("0", 0), ("1", 1), ("2", 2)])
def test_rgba8_comes_out_rgb(sources: list[GenICamSource], serial: str, channel: int) -> None:
    """Device red/green/blue draws a ball of its colour: it must land in the right channel."""
    src = _source(sources, serial=serial, pixel_format="RGBa8", width=200, height=200)
    src.open()
    (frame,) = _read_n(src, 1)
    assert frame.image.shape == (200, 200, 3)
    ball = frame.image.astype(int).sum(-1) < 600
    assert ball.sum() > 50
    colour = frame.image[ball].mean(0)
    assert colour[channel] > 200 and np.delete(colour, channel).max() < 50


@pytest.mark.parametrize(
    ("setting", "feature"),
    [
        ({"exposure_us": 1000.0}, "ExposureTime"),
        ({"gain_db": 6.0}, "Gain"),
        ({"offset_x": 16}, "OffsetX"),
        ({"trigger": "software"}, "TriggerMode"),
        ({"trigger": "hardware", "trigger_line": "Line1"}, "TriggerMode"),
    ],
)
def test_settings_viky_lacks_are_refused_loudly(
    sources: list[GenICamSource], setting: dict[str, Any], feature: str
) -> None:
    src = _source(sources, **setting)
    with pytest.raises(SourceError, match=f"no {feature}"):
        src.open()


def test_out_of_range_roi_names_the_camera_range(sources: list[GenICamSource]) -> None:
    src = _source(sources, width=5000)
    with pytest.raises(SourceError, match=r"Width=5000.*\[100, 800\]"):
        src.open()


def test_frame_rate_is_applied(sources: list[GenICamSource]) -> None:
    src = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=50)
    src.open()
    _read_n(src, 1)
    t0 = time.monotonic()
    frames = _read_n(src, 10)
    rate = (len(frames) - 1) / ((frames[-1].t_capture_ns - frames[0].t_capture_ns) / 1e9)
    assert time.monotonic() - t0 < 1.0
    assert 35 < rate < 65


def test_read_never_waits_longer_than_its_timeout(sources: list[GenICamSource]) -> None:
    src = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=1)
    src.open()
    _read_n(src, 1)
    t0 = time.monotonic()
    assert src.read(0.05) is None
    assert time.monotonic() - t0 < 0.2
    assert src.stats.snapshot().timeouts == 1


def _other_thread_turns_while_reading(src: GenICamSource, seconds: float) -> int:
    """How often another Python thread gets the GIL back (0.1 ms sleeps) while ``read`` waits."""
    turns, stop = [0], threading.Event()

    def other() -> None:  # stands in for the PLC link: short GIL-needing steps between socket waits
        while not stop.is_set():
            time.sleep(0.0001)
            turns[0] += 1

    t = threading.Thread(target=other)
    t.start()
    try:
        assert src.read(seconds) is None  # 1 frame/s: the wait runs out
    finally:
        stop.set()
        t.join()
    return turns[0]


def test_waiting_for_a_frame_leaves_the_gil_to_other_threads(sources: list[GenICamSource]) -> None:
    # harvesters' blocking wait holds the GIL: other threads get it only every switch interval (5 ms),
    # which made Modbus transactions take 20-90 ms in the service test; polling sleeps between looks
    blocking = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=1, poll_interval_us=0)
    blocking.open()
    _read_n(blocking, 1)
    blocked_turns = _other_thread_turns_while_reading(blocking, 0.3)
    blocking.close()
    polling = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=1)
    polling.open()
    _read_n(polling, 1)
    polled_turns = _other_thread_turns_while_reading(polling, 0.3)
    assert polled_turns > 3 * blocked_turns, (polled_turns, blocked_turns)
    frames = _read_n(polling, 2)  # and polling still delivers frames
    assert len(frames) == 2


def test_every_buffer_goes_back_to_the_producer(sources: list[GenICamSource]) -> None:
    """Two buffers only: if one read kept a buffer, streaming would stop within two frames."""
    src = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=200, num_buffers=2)
    src.open()
    frames = _read_n(src, 40, timeout_s=0.5)
    assert len(frames) == 40


def test_slow_consumer_losses_are_counted_as_dropped(sources: list[GenICamSource]) -> None:
    src = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=200, num_buffers=2)
    src.open()
    _read_n(src, 1)
    time.sleep(0.3)  # about 60 frames are taken, 2 buffers hold them
    _read_n(src, 5)
    assert src.stats.snapshot().dropped > 20


def _pull_the_cable(src: GenICamSource) -> None:
    """Fault injection: close the GenTL device handle under the source, as a lost link does.
    (Reaches into the source on purpose; the source must cope without knowing.)"""
    src._ia.device.module.close()


def test_device_lost_mid_run_is_reopened(sources: list[GenICamSource]) -> None:
    src = _source(sources, pixel_format="Mono8", width=100, height=100, frame_rate_hz=200, reconnect_initial_ms=50)
    src.open()
    assert len(_read_n(src, 3)) == 3
    _pull_the_cable(src)
    assert src.read(0.5) is None  # the failing fetch: counted, no exception
    assert not src.stats.snapshot().connected
    frames = _read_n(src, 3, timeout_s=0.5)
    stats = src.stats.snapshot()
    assert len(frames) == 3 and frames[0].seq == 3  # numbering goes on across the reconnect
    assert stats.reconnects == 1 and stats.connected


def test_reopen_backs_off_while_the_producer_is_gone(sources: list[GenICamSource], tmp_path: Path) -> None:
    cti = tmp_path / "viky.cti"
    shutil.copy(VIKY, cti)  # type: ignore[arg-type]
    src = _source(
        sources,
        cti_path=str(cti),
        pixel_format="Mono8",
        width=100,
        height=100,
        reconnect_initial_ms=40,
        reconnect_max_ms=160,
    )
    src.open()
    _read_n(src, 1)
    cti.rename(tmp_path / "away.cti")  # driver gone: every reopen fails
    _pull_the_cable(src)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.9:
        assert src.read(0.1) is None
    failures = src.stats.snapshot().reconnect_failures
    # Attempts at ~40, 120, 280, 440, 600, 760 ms: the delay doubles to its 160 ms cap. Without
    # backoff (one try per read) there would be ~9, with a stuck backoff fewer than 3.
    assert 4 <= failures <= 7
    (tmp_path / "away.cti").rename(cti)
    frames = _read_n(src, 2, timeout_s=0.5)
    assert len(frames) == 2 and src.stats.snapshot().reconnects == 1


def test_stalled_free_run_is_reopened(sources: list[GenICamSource]) -> None:
    src = _source(
        sources,
        pixel_format="Mono8",
        width=100,
        height=100,
        frame_rate_hz=100,
        stall_reconnect_ms=200,
        reconnect_initial_ms=20,
    )
    src.open()
    _read_n(src, 2)
    src._ia.remote_device.node_map.AcquisitionStop.execute()  # camera stops sending, link stays up
    t0 = time.monotonic()
    frames = []
    while not frames and time.monotonic() - t0 < 2.0:
        frame = src.read(0.1)
        if frame is not None:
            frames.append(frame)
    assert frames, "no frame after the stall"
    assert 0.2 < time.monotonic() - t0 < 1.5
    assert src.stats.snapshot().reconnects == 1


def test_close_is_idempotent_and_read_after_close_is_refused(sources: list[GenICamSource]) -> None:
    src = _source(sources)
    src.open()
    src.close()
    src.close()
    with pytest.raises(SourceError, match="closed"):
        src.read(0.1)


def test_cameras_command_lists_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["cameras", "--cti", "viky", "--json", "--features"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["serial"] for d in out["devices"]] == ["0", "1", "2"]
    features = out["devices"][0]["features"]
    assert features["exposure_us"] == "not available"
    assert "Mono8" in features["pixel_format"]
