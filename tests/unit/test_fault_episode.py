"""FaultEpisode: any number of failures -> one WARNING; the first success after them -> one INFO."""

from __future__ import annotations

import logging

import pytest

from lineguard.episode import FaultEpisode


def test_one_warning_and_one_info_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    ep = FaultEpisode(logging.getLogger("test.episode"), "decision log x", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.episode")
    assert ep.recover("nothing") is None and not caplog.records  # no episode, no line
    assert ep.fail("ENOSPC", "retrying") is True
    for _ in range(500):
        now[0] += 0.1
        assert ep.fail("ENOSPC", "retrying") is False
    assert ep.active and ep.failures == 501 and ep.duration_s() == pytest.approx(50.0)
    assert ep.recover("7 lines deferred") == pytest.approx(50.0)
    assert ep.recover("again") is None
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert msgs == [
        (logging.WARNING, "decision log x cannot be written (ENOSPC): retrying"),
        (logging.INFO, "decision log x writable again after 50.0 s (501 failed attempts): 7 lines deferred"),
    ]
    assert ep.fail("EIO", "retrying") is True and ep.episodes == 2 and ep.failures == 1
