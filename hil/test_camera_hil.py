"""Hardware-in-the-loop checks of the GenICam source with a real camera on the target box.

Run on the line PC with the vendor's GenTL producer:

    LINEGUARD_HIL_CTI=/opt/vendor/lib/producer.cti LINEGUARD_HIL_SERIAL=12345678 \
    LINEGUARD_HIL_PIXEL_FORMAT=Mono12 \
    .venv/bin/python -m pytest -m hil hil/test_camera_hil.py -v

LINEGUARD_HIL_HW_TRIGGER=Line0 additionally checks the hardware trigger: the test then expects
pulses on that line (from the PLC or a pulse generator) at 5 Hz or more while it runs.
These cover what viky.cti cannot: exposure, gain, ROI offsets, triggers, camera timestamps,
10/12-bit and Bayer formats.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lineguard.sources import GenICamSourceConfig, build_source
from lineguard.sources.genicam import GenICamSource

pytestmark = pytest.mark.hil

CTI = os.environ.get("LINEGUARD_HIL_CTI")
SERIAL = os.environ.get("LINEGUARD_HIL_SERIAL")
PIXEL_FORMAT = os.environ.get("LINEGUARD_HIL_PIXEL_FORMAT")
HW_LINE = os.environ.get("LINEGUARD_HIL_HW_TRIGGER")

if not CTI:
    pytest.skip("set LINEGUARD_HIL_CTI to the camera vendor's .cti", allow_module_level=True)


@pytest.fixture()
def make() -> Iterator[Any]:
    made: list[GenICamSource] = []

    def _make(**kw: Any) -> GenICamSource:
        cfg = GenICamSourceConfig(type="genicam", cti_path=str(CTI), serial=SERIAL, **kw)
        src = build_source(cfg)
        assert isinstance(src, GenICamSource)
        made.append(src)
        src.open()
        return src

    yield _make
    for src in made:
        src.close()


def _frames(src: GenICamSource, n: int) -> list:
    out = []
    deadline = time.monotonic() + 10.0
    while len(out) < n and time.monotonic() < deadline:
        frame = src.read(1.0)
        if frame is not None:
            out.append(frame)
    assert len(out) == n, f"only {len(out)} of {n} frames in 10 s"
    return out


def test_pixel_format_and_max_value(make: Any) -> None:
    src = make(pixel_format=PIXEL_FORMAT) if PIXEL_FORMAT else make()
    (frame,) = _frames(src, 1)
    assert src.info is not None
    assert frame.image.shape[:2] == (src.info.height, src.info.width)
    assert int(frame.image.max()) <= src.info.max_value
    if src.info.max_value in (1023, 4095):
        assert frame.image.dtype == np.uint16


def test_exposure_changes_brightness(make: Any) -> None:
    src = make(exposure_us=200.0, gain_db=0.0)
    dark = float(_frames(src, 3)[-1].image.mean())
    src.close()  # the camera is opened exclusively: one source at a time
    bright = float(_frames(make(exposure_us=5000.0, gain_db=0.0), 3)[-1].image.mean())
    assert bright > dark * 1.5, (dark, bright)


def test_roi_with_offsets(make: Any) -> None:
    src = make(width=256, height=128, offset_x=64, offset_y=32)
    (frame,) = _frames(src, 1)
    assert frame.image.shape[:2] == (128, 256)


def test_camera_timestamps_increase(make: Any) -> None:
    frames = _frames(make(), 5)
    stamps = [f.camera_timestamp_ns for f in frames]
    assert all(s is not None for s in stamps), "the producer reports no buffer timestamps"
    assert stamps == sorted(stamps)


def test_software_trigger_gives_one_frame_per_trigger(make: Any) -> None:
    src = make(trigger="software")
    assert src.read(0.3) is None  # nothing without a trigger
    for _ in range(3):
        src.trigger()
        assert src.read(2.0) is not None
        assert src.read(0.2) is None


@pytest.mark.skipif(not HW_LINE, reason="set LINEGUARD_HIL_HW_TRIGGER=<line> with pulses on it")
def test_hardware_trigger_delivers_frames(make: Any) -> None:
    src = make(trigger="hardware", trigger_line=str(HW_LINE))
    assert len(_frames(src, 5)) == 5


def test_unplug_and_replug(make: Any) -> None:
    """Manual step: unplug the camera cable when told, plug it back within 20 s."""
    if not os.environ.get("LINEGUARD_HIL_UNPLUG"):
        pytest.skip("set LINEGUARD_HIL_UNPLUG=1 to run the manual cable-pull check")
    src = make(reconnect_initial_ms=200, reconnect_max_ms=2000, stall_reconnect_ms=2000)
    _frames(src, 3)
    print("\n>>> unplug the camera now, plug it back within 20 s")
    deadline = time.monotonic() + 60.0
    while src.stats.snapshot().reconnects == 0 and time.monotonic() < deadline:
        src.read(1.0)
    assert src.stats.snapshot().reconnects >= 1
    _frames(src, 3)


def test_capture_with_software_trigger_records_the_settings(tmp_path: Any) -> None:
    """``lineguard capture --trigger software`` on the real camera: one frame per trigger, and the
    sidecars hold what viky cannot show (exposure and gain read back, trigger on, camera timestamps)."""
    import json

    from lineguard.cli import main

    source = {"type": "genicam", "cti_path": str(CTI), "serial": SERIAL, "exposure_us": 1000.0, "gain_db": 0.0}
    if PIXEL_FORMAT:
        source["pixel_format"] = PIXEL_FORMAT
    (tmp_path / "line.yaml").write_text(json.dumps({"source": source}))
    code = main(["capture", "--config", str(tmp_path / "line.yaml"), "--out", str(tmp_path / "d"), "--count", "3",
                 "--trigger", "software", "--min-free-mb", "1"])
    assert code == 0
    sides = [json.loads((tmp_path / "d" / "good" / f"{i:06d}.json").read_text()) for i in (1, 2, 3)]
    settings = sides[0]["camera_settings"]
    assert settings["TriggerMode"] == "On" and settings["TriggerSource"] == "Software"
    assert abs(float(settings.get("ExposureTime", settings.get("ExposureTimeAbs", 0))) - 1000.0) < 50
    stamps = [s["frame"]["camera_timestamp_ns"] for s in sides]
    assert all(isinstance(t, int) for t in stamps) and stamps == sorted(stamps)
