"""Replay source: file listing, decoding (mono/colour/16-bit), unreadable files, loop, pacing."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.errors import SourceError
from lineguard.sources import ReplaySourceConfig, build_source
from lineguard.sources.replay import ReplaySource, list_images


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """b/ sorts after a.png; c.txt is not an image extension; bad.png does not decode."""
    _write(tmp_path / "a.png", np.full((6, 8), 10, np.uint8))
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    _write(tmp_path / "b" / "colour.png", bgr)
    _write(tmp_path / "b" / "deep.png", np.full((6, 8), 4000, np.uint16))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "c.txt").write_text("not an image")
    return tmp_path


def test_listing_is_recursive_sorted_and_filtered(folder: Path) -> None:
    files = list_images([folder], recursive=True, extensions=[".png"])
    assert [p.relative_to(folder).as_posix() for p in files] == ["a.png", "b/colour.png", "b/deep.png", "bad.png"]
    flat = list_images([folder], recursive=False, extensions=["PNG"])
    assert [p.name for p in flat] == ["a.png", "bad.png"]


def test_explicit_file_list_keeps_its_order(folder: Path) -> None:
    files = list_images([folder / "b" / "deep.png", folder / "a.png"], recursive=True, extensions=[".png"])
    assert [p.name for p in files] == ["deep.png", "a.png"]


def test_missing_path_fails_at_build(tmp_path: Path) -> None:
    cfg = ReplaySourceConfig(type="replay", paths=(str(tmp_path / "nope"),))
    with pytest.raises(SourceError, match="does not exist"):
        build_source(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no image files"):
        build_source(ReplaySourceConfig(type="replay", paths=(str(empty),)))


def test_decoding_mono_colour_16_bit_and_unreadable(folder: Path) -> None:
    src = build_source(ReplaySourceConfig(type="replay", paths=(str(folder),)))
    with src:
        frames = list(src.frames(timeout_s=1.0))
        stats = src.stats.snapshot()
    # the unreadable file is still its part: a fault frame under its own id, no shift
    assert [Path(f.source_ref).name for f in frames] == ["a.png", "colour.png", "deep.png", "bad.png"]
    assert [f.fault for f in frames] == ["", "", "", "unreadable_frame"]
    assert frames[3].image.size == 0 and "decode" in frames[3].fault_detail
    mono, colour, deep = (f.image for f in frames[:3])
    assert mono.shape == (6, 8) and mono.dtype == np.uint8 and mono[0, 0] == 10
    assert colour.shape == (6, 8, 3) and tuple(colour[0, 0]) == (200, 0, 0)  # RGB order
    assert deep.dtype == np.uint16 and deep[0, 0] == 4000  # 16-bit kept, not scaled
    assert stats.frames == 4 and stats.unreadable == 1
    ((bad_path, reason),) = src.stats.unreadable_paths
    assert bad_path.endswith("bad.png") and "decode" in reason
    assert [f.seq for f in frames] == [0, 1, 2, 3] and [f.part_id for f in frames] == [1, 2, 3, 4]
    assert [f.frame_id for f in frames] == [0, 1, 2, 3]


def test_bgra_alpha_is_dropped(tmp_path: Path) -> None:
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0] = 50  # blue
    bgra[..., 3] = 128
    _write(tmp_path / "x.png", bgra)
    with ReplaySource(camera_id="c", files=[tmp_path / "x.png"]) as src:
        frame = src.read(1.0)
    assert frame is not None and frame.image.shape == (4, 4, 3) and tuple(frame.image[0, 0]) == (0, 0, 50)


def test_loop_repeats_and_answers_bad_files_every_pass(folder: Path) -> None:
    files = list_images([folder], recursive=True, extensions=[".png"])
    with ReplaySource(camera_id="c", files=files, loop=True) as src:
        frames = [src.read(1.0) for _ in range(9)]
    assert all(f is not None for f in frames)
    names = [Path(f.source_ref).name for f in frames if f is not None]
    assert names == ["a.png", "colour.png", "deep.png", "bad.png"] * 2 + ["a.png"]
    # positions count on across passes, so part ids never repeat
    assert [f.frame_id for f in frames if f is not None] == list(range(9))
    assert [f.part_id for f in frames if f is not None] == list(range(1, 10))
    assert src.stats.snapshot().unreadable == 2  # once per pass
    assert not src.finished


def test_loop_over_only_bad_files_raises_instead_of_spinning(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with ReplaySource(camera_id="c", files=[tmp_path / "bad.png"], loop=True) as src:
        first = src.read(1.0)  # the first pass answers the bad file as its part
        assert first is not None and first.fault == "unreadable_frame"
        with pytest.raises(SourceError, match="none of the 1 files decodes"):
            src.read(1.0)


def test_rate_and_info(folder: Path) -> None:
    files = list_images([folder / "a.png"], recursive=True, extensions=[".png"]) * 6
    with ReplaySource(camera_id="c", files=files, rate_parts_per_s=40.0) as src:
        assert src.info is not None and (src.info.width, src.info.height, src.info.channels) == (8, 6, 1)
        t0 = time.monotonic()
        frames = list(src.frames())
        elapsed = time.monotonic() - t0
    assert len(frames) == 6
    assert 0.11 < elapsed < 0.3  # 5 periods of 25 ms


def test_mixed_sizes_leave_info_unknown(folder: Path) -> None:
    _write(folder / "a2.png", np.zeros((10, 10), np.uint8))
    files = list_images([folder], recursive=False, extensions=[".png"])
    with ReplaySource(camera_id="c", files=files) as src:
        assert src.info is None


def test_skip_policy_advances_past_missed_files(folder: Path) -> None:
    files = [folder / "a.png"] * 30
    with ReplaySource(camera_id="c", files=files, rate_parts_per_s=100.0, late_policy="skip") as src:
        first = src.read(1.0)
        time.sleep(0.1)
        rest = [first, *src.frames()]
    dropped = src.stats.snapshot().dropped
    assert dropped >= 7
    # every file is one frame: delivered, or a missing_frame for a slot nobody read, in order
    delivered = [f for f in rest if f is not None and not f.fault]
    missing = [f for f in rest if f is not None and f.fault == "missing_frame"]
    assert len(missing) == dropped and len(delivered) + len(missing) == 30
    assert [f.part_id for f in rest if f is not None] == list(range(1, 31))


def test_skipped_slots_at_the_end_still_get_their_frames(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", np.full((6, 8), 10, np.uint8))
    with ReplaySource(camera_id="c", files=[tmp_path / "a.png"] * 10, rate_parts_per_s=100.0,
                      late_policy="skip") as src:
        src.read(1.0)
        time.sleep(0.2)  # the remaining 9 slots all pass unread: the list ends inside the gap
        rest = list(src.frames())
    assert [f.part_id for f in rest] == list(range(2, 11)) and {f.fault for f in rest} == {"missing_frame"}
