"""Part ids from PLC triggers: the n-th part of the source is the PLC's n-th trigger."""

from __future__ import annotations

import logging

import pytest

from lineguard.partids import TriggerPartIds


class Link:
    """What the PLC link reports: (trigger number since its first read, part id) of the latest."""

    def __init__(self) -> None:
        self.latest: tuple[int, int] | None = None
        self.on_wait: list[tuple[int, int]] = []  # triggers that arrive while a frame waits

    def __call__(self) -> tuple[int, int] | None:
        return self.latest

    def sleep(self, _s: float) -> None:
        if self.on_wait:
            self.latest = self.on_wait.pop(0)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def _ids(link: Link, wait_s: float = 0.05) -> TriggerPartIds:
    return TriggerPartIds(link, wait_s=wait_s, clock=Clock(), sleep=link.sleep)


def test_each_part_takes_its_own_trigger_part_id() -> None:
    link = Link()
    ids = _ids(link)
    out = []
    for n, pid in enumerate((1000, 1001, 1002), start=1):
        link.latest = (n, pid)
        out.append(ids(n - 1))
    assert out == [1000, 1001, 1002] and ids.exact == 3 and ids.inferred == 0


def test_a_frame_ahead_of_the_link_poll_waits_for_its_trigger() -> None:
    link = Link()
    link.latest = (1, 500)
    link.on_wait = [(1, 500), (2, 501)]  # the link reads trigger 2 while frame seq 1 waits
    ids = _ids(link)
    assert ids(1) == 501 and ids.exact == 1


def test_triggers_polled_too_late_keep_the_numbering() -> None:
    link = Link()
    ids = _ids(link)
    link.latest = (1, 70)
    assert ids(0) == 70
    link.latest = (4, 73)  # the PLC triggered 2 and 3 between two polls: their ids are never read
    assert [ids(1), ids(2), ids(3)] == [71, 72, 73]
    assert ids.exact == 2 and ids.inferred == 2


def test_a_frame_whose_trigger_never_comes_is_numbered_from_the_latest() -> None:
    link = Link()
    link.latest = (3, 12)
    ids = _ids(link)
    assert ids(4) == 14 and ids.inferred == 1  # waited wait_s, then inferred: trigger 5 = 12 + 2


def test_no_trigger_at_all_numbers_by_the_count_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    ids = _ids(Link())
    with caplog.at_level(logging.WARNING, logger="lineguard.partids"):
        assert [ids(0), ids(1)] == [1, 2]
    assert ids.untriggered == 2 and len(caplog.records) == 1


def test_part_ids_that_jump_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    link = Link()
    ids = _ids(link)
    link.latest = (1, 100)
    ids(0)
    link.latest = (2, 200)  # the PLC renumbered
    with caplog.at_level(logging.WARNING, logger="lineguard.partids"):
        assert ids(1) == 200
    assert "do not grow by 1" in caplog.text and "+99" in caplog.text


def test_u32_part_ids_wrap() -> None:
    link = Link()
    link.latest = (1, 2**32 - 1)
    ids = _ids(link, wait_s=0.0)
    assert ids(0) == 2**32 - 1 and ids(1) == 0
