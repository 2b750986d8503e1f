"""Fault episodes and throttled per-part warnings of the PLC link: bounded log volume on a fault."""

from __future__ import annotations

import logging

import pytest

from lineguard.plc.recorder import FaultEpisodes, FlightRecorder, Throttle, Transaction

S = 1_000_000_000
log = logging.getLogger("test.plc")


def _episodes() -> FaultEpisodes:
    rec = FlightRecorder(capacity=4)
    for i in range(6):
        rec.record(Transaction(t_ns=i, op="write_regs", address=3, values=(i,), latency_us=50.0, error=""))
    return FaultEpisodes(recorder=rec, logger=log, quiet_ns=S)


def test_one_dump_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ep = _episodes()
    assert ep.fault(0, "connection lost") and not ep.fault(S // 2, "overflow")  # same episode
    for i in range(100):
        ep.fault(S // 2 + i, "overflow")
        ep.note("overflow")
    assert not ep.healthy(S)  # the last fault was 0.5 s ago: not quiet long enough
    assert ep.healthy(2 * S) and not ep.active
    assert ep.fault(3 * S, "connection lost")  # a new episode
    assert ep.count == 2
    assert caplog.text.count("last 4 transactions:") == 2
    assert "PLC fault episode 1 over (link healthy again) after 2.0 s: overflow 100" in caplog.text


def test_throttle_bounds_per_part_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    th = Throttle(log, burst=3, window_ns=10 * S)
    for pid in range(50):
        th.warning(pid, "overflow", "part %d: buffer full", pid)
    th.warning(11 * S, "overflow", "part %d: buffer full", 99)  # a new window: reports the suppressed
    th.flush()
    lines = caplog.text.splitlines()
    assert len(lines) == 5, lines
    assert "... and 47 more 'overflow' messages" in caplog.text and "part 99" in caplog.text


def test_throttle_backs_off_while_every_part_is_hit(caplog: pytest.LogCaptureFixture) -> None:
    """An hour of a fault that hits every part at 10 parts/s: a few dozen lines, not 36 000."""
    caplog.set_level(logging.WARNING)
    th = Throttle(log, burst=3, window_ns=10 * S, max_window_ns=600 * S)
    for i in range(36_000):
        th.warning(i * S // 10, "overflow", "part %d: buffer full", i)
    th.flush()
    assert 20 <= len(caplog.records) <= 60, len(caplog.records)
    suppressed = sum(int(r.getMessage().split()[2]) for r in caplog.records if "more" in r.getMessage())
    assert suppressed + sum(1 for r in caplog.records if "more" not in r.getMessage()) == 36_000
