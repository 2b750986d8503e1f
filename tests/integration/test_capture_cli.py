"""``lineguard capture`` against the real viky.cti camera (through harvesters) and the synthetic source.

Each refusal has its own test with its message: a camera that cannot be opened, a changed pixel
format, a disk too small for the capture (a tmpfs mounted by the test, root only) and a software
trigger the camera does not have. viky streams a ball on white (Mono8 or RGBa8, 100..800 px, frame
ids, no timestamps, no trigger).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("harvesters.core", reason="harvesters is not installed")

from lineguard.cli import main
from lineguard.imageio import read_image
from lineguard.sources import SyntheticSourceConfig, build_source
from lineguard.sources.genicam import list_devices, viky_cti_path
from lineguard.sources.synthetic import SyntheticSource
from lineguard_models.data import scan_dataset

VIKY = viky_cti_path()
pytestmark = pytest.mark.skipif(VIKY is None, reason="viky.cti is not inside this genicam wheel")


@pytest.fixture(autouse=True)
def producer_released() -> Iterator[None]:
    yield
    assert len(list_devices(str(VIKY))) == 3, "capture left the GenTL producer open"


def _config(path: Path, **source: object) -> str:
    src = {"type": "genicam", "cti_path": str(VIKY), "serial": "0", "pixel_format": "RGBa8", "width": 100,
           "height": 100, "frame_rate_hz": 50.0, **source}
    # the first day's config has no bundle yet; capture reads only source:
    path.write_text(json.dumps({"line": {"name": "press-3"}, "source": src}))  # JSON is YAML
    return str(path)


def _capture(capsys: pytest.CaptureFixture[str], config: str, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["capture", "--config", config, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_viky_frames_numbered_on_with_sidecars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, data = _config(tmp_path / "line.yaml"), tmp_path / "teach"
    code, out, err = _capture(capsys, config, data, "--count", "6")
    assert code == 0, err
    assert "captured 6 frames" in out and "000001.png .. 000006.png" in out and "Viky serial 0" in out
    assert "6/6 frames" in err and "frames/s" in err  # the progress bar with the rate
    first = {p.name: _sha(p) for p in (data / "good").glob("*.png")}
    assert sorted(first) == [f"{i:06d}.png" for i in range(1, 7)]
    side = json.loads((data / "good" / "000001.json").read_text())
    assert side["camera"] == {"vendor": side["camera"]["vendor"], "model": "Viky", "serial": "0"}
    assert side["camera_settings"]["PixelFormat"] == "RGBa8" and side["camera_settings"]["Width"] == 100
    assert side["image"] == {"width": 100, "height": 100, "channels": 3, "dtype": "uint8", "max_value": 255,
                             "pixel_format": "RGBa8"}
    assert side["class"] == "good" and side["config"]["serial"] == "0" and side["sha256"] == first["000001.png"]
    assert isinstance(side["frame"]["frame_id"], int) and "camera_timestamp_ns" in side["frame"]
    img = read_image(data / "good" / "000001.png")
    assert img.shape == (100, 100, 3) and img.dtype == np.uint8  # RGBa8 arrives as RGB, alpha dropped

    # a second run numbers on and leaves the first frames alone; a reject-bin class beside it
    code, out, err = _capture(capsys, config, data, "--count", "3", "--every-nth", "3")
    assert code == 0, err
    assert "000007.png .. 000009.png" in out
    assert {p.name: _sha(p) for p in (data / "good").glob("00000[1-6].png")} == first
    ids = [json.loads((data / "good" / f"{i:06d}.json").read_text())["frame"]["frame_id"] for i in (7, 8, 9)]
    assert all(b - a >= 3 for a, b in itertools.pairwise(ids)), ids  # every third frame kept
    code, out, err = _capture(capsys, _config(tmp_path / "bin.yaml", serial="1"), data, "--count", "2",
                              "--class", "green_ball")
    assert code == 0, err
    ds = scan_dataset(data)  # the layout `lineguard train` reads; sidecars are not data
    assert ds.summary()["counts"] == {"good": 9, "green_ball": 2} and ds.warnings == ()
    assert (ds.channels, ds.dtype) == (3, "uint8")


@pytest.mark.parametrize(("channels", "bit_depth"), [(1, 16), (3, 8), (1, 12)])
def test_synthetic_frames_are_written_bit_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str], channels: int,
                                               bit_depth: int) -> None:
    src = {"type": "synthetic", "width": 64, "height": 48, "channels": channels, "bit_depth": bit_depth, "seed": 5}
    (tmp_path / "line.yaml").write_text(json.dumps({"source": src}))
    code, _, err = _capture(capsys, str(tmp_path / "line.yaml"), tmp_path / "d", "--count", "3")
    assert code == 0, err
    ref = build_source(SyntheticSourceConfig.model_validate(src))
    assert isinstance(ref, SyntheticSource)
    ref.open()
    for k in range(3):
        written = read_image(tmp_path / "d" / "good" / f"{k + 1:06d}.png")
        expected = ref.render(k)[0]
        assert written.dtype == expected.dtype and np.array_equal(written, expected)  # exactly the service's pixels
    side = json.loads((tmp_path / "d" / "good" / "000001.json").read_text())
    assert side["image"]["max_value"] == {8: 255, 12: 4095, 16: 65535}[bit_depth]


def test_refuses_a_camera_it_cannot_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _capture(capsys, _config(tmp_path / "line.yaml", serial="7"), tmp_path / "d", "--count", "2")
    assert code == 1
    assert "cannot open the genicam source" in err and "no camera with serial='7'" in err and "serial 2" in err
    assert not list((tmp_path / "d" / "good").glob("*.png"))


def test_refuses_a_missing_producer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _capture(capsys, _config(tmp_path / "line.yaml", cti_path=str(tmp_path / "no.cti")),
                            tmp_path / "d", "--count", "2")
    assert code == 1 and "no.cti' not found" in err and "cti_path" in err


def test_refuses_a_changed_pixel_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d"
    assert _capture(capsys, _config(tmp_path / "rgb.yaml"), data, "--count", "2")[0] == 0
    code, _, err = _capture(capsys, _config(tmp_path / "mono.yaml", pixel_format="Mono8"), data, "--count", "2")
    assert code == 1
    assert "pixel format changed" in err and "100x100 RGB uint8" in err and "100x100 mono uint8" in err
    assert "channels" in err and "new --out folder" in err
    code, _, err = _capture(capsys, _config(tmp_path / "roi.yaml", width=120), data, "--count", "2",
                            "--class", "dent")
    assert code == 1 and "120x100 RGB" in err and "width" in err  # other class folders must match too
    assert sorted(p.name for p in data.rglob("*.png")) == ["000001.png", "000002.png"]


def test_refuses_a_software_trigger_the_camera_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _capture(capsys, _config(tmp_path / "line.yaml"), tmp_path / "d", "--count", "1",
                            "--trigger", "software")
    assert code == 1 and "TriggerMode" in err and "trigger: software" in err
    (tmp_path / "syn.yaml").write_text(json.dumps({"source": {"type": "synthetic"}}))
    code, _, err = _capture(capsys, str(tmp_path / "syn.yaml"), tmp_path / "d", "--count", "1", "--trigger", "software")
    assert code == 1 and "--trigger software needs a genicam source" in err


def test_refuses_a_bad_class_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _capture(capsys, _config(tmp_path / "line.yaml"), tmp_path / "d", "--count", "1",
                            "--class", "../escape")
    assert code == 1 and "not a usable class folder name" in err and not (tmp_path / "escape").exists()


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real file system that runs full (needs root and mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_refuses_a_capture_the_disk_cannot_hold(small_disk: Path, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    # 100 frames of 100x100 RGB (30 kB raw each) do not fit in 1 MiB: refused before the first file
    code, _, err = _capture(capsys, _config(tmp_path / "line.yaml"), small_disk / "d", "--count", "100",
                            "--min-free-mb", "0")
    assert code == 1
    assert "not enough free disk space" in err and "--count" in err
    assert not list((small_disk / "d" / "good").iterdir())


def test_a_full_disk_while_writing_leaves_no_partial_file(small_disk: Path) -> None:
    from lineguard.capture import CaptureError, TeachSetWriter

    writer = TeachSetWriter(small_disk / "d", "good")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 kB of PNG
    with pytest.raises(CaptureError) as info:
        for _ in range(20):  # 2.4 MB never fit in 1 MiB
            writer.write(noise, {"class": "good"})
    assert "disk full while writing" in str(info.value) and "frames written and kept" in str(info.value)
    files = sorted(p.name for p in (small_disk / "d" / "good").iterdir())
    kept = len(writer.written)
    assert 1 <= kept < 20
    assert files == sorted([f"{i:06d}.png" for i in range(1, kept + 1)] + [f"{i:06d}.json" for i in range(1, kept + 1)])
    assert all(np.array_equal(read_image(p), noise) for p in writer.written)  # every kept frame is whole


def test_replay_skips_a_broken_file_keeps_the_source_path(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    src_dir = tmp_path / "vendor-tool"
    src_dir.mkdir()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 50), dtype=np.uint8) for _ in range(3)]
    for i, img in enumerate(images):
        cv2.imwrite(str(src_dir / f"img{i}.png"), img)
    (src_dir / "img1b.png").write_bytes(b"\x89PNG truncated")  # sorts between img1 and img2
    (tmp_path / "line.yaml").write_text(json.dumps({"source": {"type": "replay", "paths": [str(src_dir)]}}))
    code, out, err = _capture(capsys, str(tmp_path / "line.yaml"), tmp_path / "d", "--count", "10")
    assert code == 0 and "captured 3 frames" in out and "finished after 3 of 10 frames" in err
    assert "img1b.png" in err + caplog.text  # named where the operator looks
    written = sorted((tmp_path / "d" / "good").glob("*.png"))
    assert [np.array_equal(read_image(p), img) for p, img in zip(written, images, strict=True)] == [True] * 3
    side = json.loads((tmp_path / "d" / "good" / "000003.json").read_text())
    assert side["frame"]["source_ref"].endswith("img2.png") and side["source"]["type"] == "replay"
