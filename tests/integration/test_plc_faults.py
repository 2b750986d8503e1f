"""PLC link fault cases against the simulator on loopback: in every case each part still gets
exactly one verdict in the registers or a counted fail-safe, and nothing hangs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from lineguard.plc import PlcConfig, PlcLink, PlcOutcome
from lineguard.plc.config import FieldSpec, RegisterMapConfig
from lineguard.plc.sim import PlcSimulator, free_port
from lineguard.plc.testing import Records, audit, audit_records, fast_config, feed, sample, settle

pytestmark = pytest.mark.timeout(60)


def _cfg(port: int, **kw: object) -> PlcConfig:
    return fast_config(port, **{"deadline_ms": 100, "timeout_ms": 100, "reconnect_backoff_max_ms": 100,
                                "reconnected_flag_hold_ms": 300, **kw})


def _run(link: PlcLink) -> Iterator[PlcLink]:
    link.start()
    t0 = time.monotonic()
    yield link
    link.stop()
    assert time.monotonic() - t0 < 30  # nothing hangs


def test_plc_absent_at_start() -> None:
    port = free_port()
    reg = CollectorRegistry()
    link = PlcLink.from_config(_cfg(port), metrics_registry=reg)
    records = Records()
    link.set_record_sink(records)
    sim = PlcSimulator(port=port).start(listen=False)
    link.start()
    try:
        feed(link, range(1, 21), period_s=0.002)  # 20 parts, 8 fit the buffer
        time.sleep(0.3)
        assert not link.health().connected and link.health().t_lost_ns is not None
        sim.online()
        assert sim.wait_until(lambda: link.health().connected, 5.0)
        assert settle(link, 5.0)
        feed(link, range(21, 31), period_s=0.005)
        assert settle(link, 5.0)
    finally:
        link.stop()
        sim.stop()
    a = audit(sim, reg, range(1, 31))
    assert a.ok, a
    # while the PLC was away: 8 buffered results passed their deadline (never written late), 12 overflowed
    assert a.counted_unwritten == 20 and a.written == 10
    assert sample(reg, "lineguard_plc_errors_total", kind="connection") >= 1
    assert sample(reg, "lineguard_plc_buffer_overflows_total") == 12
    assert sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="missed_deadline") == 8
    assert audit_records(sim, records, range(1, 31)) == []
    assert (records.count(PlcOutcome.MISSED_DEADLINE), records.count(PlcOutcome.OVERFLOW)) == (8, 12)
    assert records.count(PlcOutcome.WRITTEN) == 10


@pytest.mark.parametrize("how", ["drop", "offline"])
def test_connection_lost_mid_run(sim: PlcSimulator, how: str) -> None:
    reg = CollectorRegistry()
    link = PlcLink.from_config(_cfg(sim.port, result_buffer_size=64), metrics_registry=reg)
    records = Records()
    link.set_record_sink(records)
    link.start()
    try:
        feed(link, range(1, 31), period_s=0.004)
        if how == "drop":
            sim.drop_connections()
        else:
            sim.offline()
        feed(link, range(31, 61), period_s=0.004)
        assert link.health().connected is False or how == "drop"
        if how == "offline":
            sim.online()
        feed(link, range(61, 91), period_s=0.004)
        assert settle(link, 5.0)
        assert sim.wait_until(lambda: any(s & 1 << 5 for _, _, s in sim.heartbeats()), 2.0)
    finally:
        link.stop()
    a = audit(sim, reg, range(1, 91))
    assert a.ok, a
    # the 64-result buffer bridges the outage for results still within their deadline; the others
    # are counted as missed_deadline and never written late
    assert a.counted_unwritten == sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="missed_deadline")
    assert audit_records(sim, records, range(1, 91)) == []
    assert link.health().reconnects >= 1 and sample(reg, "lineguard_plc_reconnects_total") >= 1


def test_plc_slower_than_the_deadline(sim: PlcSimulator) -> None:
    """Responses take 60 ms (deadline 100 ms, timeout 200 ms): verdicts queue up, none is lost.
    (The timeout has headroom over 100 ms so that a starved CI box does not time out answers the
    simulator sends at once, which would keep the link reconnecting after the slow phase.)"""
    reg = CollectorRegistry()
    link = PlcLink.from_config(_cfg(sim.port, result_buffer_size=32, timeout_ms=200), metrics_registry=reg)
    link.start()
    try:
        assert sim.wait_until(lambda: sim.heartbeats() != [], 2.0)
        sim.set_response_delay_ms(60)
        feed(link, range(1, 21), skip={5}, period_s=0.01)
        assert settle(link, 10.0)
        sim.set_response_delay_ms(450)  # now slower than the timeout: timeouts, reconnects
        feed(link, range(21, 26), period_s=0.01)
        time.sleep(0.5)
        sim.set_response_delay_ms(0)
        assert settle(link, 10.0)
    finally:
        link.stop()
    a = audit(sim, reg, range(1, 26))
    assert a.ok, a
    assert sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="deadline") >= 1
    assert sample(reg, "lineguard_plc_errors_total", kind="timeout") >= 1


def test_plc_stops_acking(sim: PlcSimulator) -> None:
    reg = CollectorRegistry()
    link = PlcLink.from_config(_cfg(sim.port, deadline_ms=1000), metrics_registry=reg)
    link.start()
    try:
        feed(link, range(1, 6), period_s=0.005)
        assert settle(link, 3.0)
        sim.set_acking(False)
        feed(link, range(6, 21), period_s=0.005)  # 1 written + 7 buffered, then 7 overflow
        assert sim.wait_until(lambda: sample(reg, "lineguard_plc_buffer_overflows_total") == 7, 3.0)
        assert sim.wait_until(lambda: sim.status_bits()["result_overflow"] and sim.status_bits()["fault"], 2.0)
        assert sample(reg, "lineguard_plc_unacked_results") == 8
        sim.set_acking(True)
        assert settle(link, 3.0)
    finally:
        link.stop()
    a = audit(sim, reg, range(1, 21))
    assert a.ok and a.written == 13, a


def test_wrong_unit_id(sim: PlcSimulator) -> None:
    reg = CollectorRegistry()
    link = PlcLink.from_config(_cfg(sim.port, registers=RegisterMapConfig(unit_id=7)), metrics_registry=reg)
    link.start()
    try:
        feed(link, range(1, 11), period_s=0.005)
        assert settle(link, 3.0)
    finally:
        link.stop()
    a = audit(sim, reg, range(1, 11))
    assert a.ok and a.written == 0 and a.counted_unwritten == 10, a
    refused = sum(sample(reg, "lineguard_plc_errors_total", kind=k) for k in ("device", "exception_response"))
    assert refused >= 10


def test_illegal_address_response(sim: PlcSimulator, caplog: pytest.LogCaptureFixture) -> None:
    """The map points the result block beyond the PLC's 100 registers: exception code 2."""
    reg = CollectorRegistry()
    regs = RegisterMapConfig(part_id=FieldSpec(address=200, dtype="u32"))  # type: ignore[arg-type]
    link = PlcLink.from_config(_cfg(sim.port, registers=regs), metrics_registry=reg)
    link.start()
    try:
        feed(link, range(1, 6), period_s=0.005)
        assert settle(link, 3.0)
        sim.set_refuse_writes(True)  # and a PLC that refuses everything
        feed(link, range(6, 8), period_s=0.005)
        assert settle(link, 3.0)
    finally:
        link.stop()
    assert sample(reg, "lineguard_plc_errors_total", kind="illegal_address") >= 7
    assert sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="plc_rejected") == 7
    assert "last" in caplog.text and "transactions" in caplog.text  # flight recorder dumped


def test_inbox_full_still_one_record_per_part() -> None:
    """A writer that cannot keep up (here: not started yet) must not cost a part its log line,
    nor give one part two: the dropped verdict is logged at once, its later fail-safe is not."""
    port = free_port()  # nobody listens: the parts end unsent at stop
    reg = CollectorRegistry()
    link = PlcLink.from_config(_cfg(port, inbox_capacity=16, deadline_ms=50), metrics_registry=reg)
    records = Records()
    link.set_record_sink(records)
    for pid in range(1, 17):
        link.expect(pid, time.monotonic_ns())  # fills the inbox
    feed(link, [1])  # expect + submit of part 1: both dropped; the verdict is logged now
    assert records.by_part() == {1: [PlcOutcome.UNSENT]}
    link.start()
    time.sleep(0.2)  # the 16 deadlines pass while the link is down
    link.stop()
    by_part = records.by_part()
    assert sorted(by_part) == list(range(1, 17)) and all(len(v) == 1 for v in by_part.values()), by_part
    # the link was down when their deadlines passed: nothing queued, nothing overflowed
    assert by_part[1] == [PlcOutcome.UNSENT] and records.count(PlcOutcome.MISSED_DEADLINE) == 15
    assert sample(reg, "lineguard_plc_inbox_drops_total") == 2
