"""Bounded per-part warnings of the sources (unreadable replay files, incomplete camera buffers):
the first few one by one, then one line per interval with the count, the rest at close."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineguard.sources.partwarn import PartWarnings
from lineguard.sources.replay import ReplaySource

LOGGER = "test.partwarn"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_first_few_then_one_line_per_interval_then_the_rest_at_flush(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = Clock()
    w = PartWarnings(logging.getLogger(LOGGER), "bad parts", first=3, every_s=60.0, clock=clock)
    for i in range(1000):  # 1000 bad parts in 100 s
        clock.t = i * 0.1
        w.warn("part %d is bad", i)
    w.flush()
    lines = messages(caplog)
    assert lines[:2] == ["part 0 is bad", "part 1 is bad"]
    assert lines[2] == "part 2 is bad (more bad parts: one line per 60 s, all counted in the metrics)"
    # part 3 comes 0.1 s after the last line; 60 s later (part 602) one line for the 600 since
    assert lines[3] == "600 bad parts in the last 60 s (603 in all); latest: part 602 is bad"
    assert lines[4] == "397 more bad parts not logged one by one (1000 in all)"
    assert len(lines) == 5 and w.total == 1000
    w.flush()
    assert len(messages(caplog)) == 5, "nothing left to say"


def test_a_replay_folder_of_broken_files_logs_a_handful_of_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lineguard.sources.replay")
    for i in range(60):
        path = tmp_path / f"{i:03d}.png"
        if i % 2:
            path.write_bytes(b"not a PNG")
        else:
            cv2.imwrite(str(path), np.full((16, 16), 128, np.uint8))
    src = ReplaySource(camera_id="cam", files=sorted(tmp_path.iterdir()))
    src.open()
    faults = 0
    while (frame := src.read(0.1)) is not None:
        faults += frame.image.size == 0
    src.close()
    assert faults == 30 and src.stats.snapshot().unreadable == 30
    lines = [r.getMessage() for r in caplog.records if r.name == "lineguard.sources.replay"]
    assert len(lines) == 6, lines  # 5 one by one, the rest in one line at close
    assert lines[0].startswith("replay: part at position 1 is unreadable, fail-safe: cannot decode")
    assert lines[-1] == "25 more unreadable replay files not logged one by one (30 in all)"
