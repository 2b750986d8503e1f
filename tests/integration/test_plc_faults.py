"""PLC link fault cases against the simulator on loopback: in every case each part still gets
exactly one verdict in the registers or a counted fail-safe, and nothing hangs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from lineguard.plc import PlcConfig, PlcLink, PlcOutcome
from lineguard.plc.config import FieldSpec, RegisterMapConfig
from lineguard.plc.relay import ReplyLossRelay
from lineguard.plc.sim import PlcSimulator, free_port
from lineguard.plc.testing import Records, audit, audit_records, fast_config, feed, sample, settle

pytestmark = pytest.mark.timeout(60)


def _cfg(port: int, **kw: object) -> PlcConfig:
    return fast_config(port, **{"deadline_ms": 100, "timeout_ms": 100, "reconnect_backoff_max_ms": 100,
                                "reconnected_flag_hold_ms": 300, **kw})


def _started(port: int, reg: CollectorRegistry, **cfg: object) -> tuple[PlcLink, Records]:
    """A started link with a record sink (what the decision log would receive)."""
    link = PlcLink.from_config(_cfg(port, **cfg), metrics_registry=reg)
    records = Records()
    link.set_record_sink(records)
    link.start()
    return link, records


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


@pytest.mark.parametrize("handshake", ["acknowledged", "fire_and_forget"])
@pytest.mark.parametrize("deadline_ms", [50, 2000])
def test_result_whose_answer_was_lost_is_read_back(sim: PlcSimulator, handshake: str, deadline_ms: int) -> None:
    """The PLC takes a result block but its answer comes after timeout_ms: the link closes and
    reconnects. The result may be at the PLC, so it reads result_seq back instead of writing it
    again (deadline 2 s) or counting it missed (deadline 50 ms, passed while the link was down):
    either way the PLC holds it once and the decision log says written."""
    reg = CollectorRegistry()
    link, records = _started(sim.port, reg, handshake=handshake, deadline_ms=deadline_ms)
    try:
        feed(link, [1])
        assert settle(link, 3.0)
        sim.stall_after_next_result(400)  # 4x the 100 ms timeout
        feed(link, [2])
        assert settle(link, 5.0)
        feed(link, [3])  # the line goes on as before
        assert settle(link, 3.0)
    finally:
        link.stop()
    assert sample(reg, "lineguard_plc_errors_total", kind="timeout") == 1
    assert link.health().reconnects == 1
    assert [r.part_id for r in sim.results()] == [1, 2, 3], "each block reached the PLC once, none again"
    a = audit(sim, reg, range(1, 4))
    assert a.ok and a.written == 3 and a.counted_unwritten == 0, a
    assert records.by_part() == {p: [PlcOutcome.WRITTEN] for p in (1, 2, 3)}


def test_replies_lost_on_the_network_are_read_back(sim: PlcSimulator) -> None:
    """The same through a real TCP relay that swallows every 3rd result reply (the tool the
    hardware-in-the-loop check uses against the real PLC): nothing is written twice or lost."""
    relay = ReplyLossRelay((sim.host, sim.port), result_seq_address=sim.cfg.result_seq.address, every=3).start()
    reg = CollectorRegistry()
    link, records = _started(relay.port, reg, deadline_ms=2000)
    try:
        for pid in range(1, 10):
            feed(link, [pid])
            assert settle(link, 5.0)
    finally:
        link.stop()
        relay.stop()
    assert relay.swallowed == 3 and link.health().reconnects == 3
    assert [r.part_id for r in sim.results()] == list(range(1, 10)), "each block reached the PLC once, none again"
    assert records.by_part() == {p: [PlcOutcome.WRITTEN] for p in range(1, 10)}
    assert audit(sim, reg, range(1, 10)).ok


def test_repeated_losses_log_a_few_lines_not_two_per_loss(sim: PlcSimulator, caplog: pytest.LogCaptureFixture) -> None:
    """Six losses in one fault episode: 3 'lost' and 3 're-established' lines, then one line each
    saying how many more were suppressed; every result still reaches the PLC once."""
    link = PlcLink.from_config(_cfg(sim.port, deadline_ms=2000), metrics_registry=CollectorRegistry())
    link.start()
    try:
        for pid in range(1, 7):
            sim.stall_after_next_result(300)
            feed(link, [pid])
            assert settle(link, 5.0)
    finally:
        link.stop()
    assert link.health().reconnects == 6
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost (timeout)" in m for m in messages) == 3
    assert sum("re-established" in m for m in messages) == 3
    assert "... and 3 more 'link_lost' messages (suppressed, see metrics)" in messages
    assert "... and 3 more 'link_back' messages (suppressed, see metrics)" in messages
    assert [r.part_id for r in sim.results()] == [1, 2, 3, 4, 5, 6]


def test_stop_retries_a_link_in_backoff_to_flush_what_is_buffered(sim: PlcSimulator) -> None:
    """The PLC is back but the link waits out a 10 s backoff: stop() retries at once and the
    buffered results (still within their 5 s deadline) reach the PLC inside its flush time."""
    reg = CollectorRegistry()
    link, records = _started(sim.port, reg, deadline_ms=5000, reconnect_backoff_initial_ms=10_000,
                             reconnect_backoff_max_ms=10_000)
    try:
        feed(link, [1])
        assert settle(link, 3.0)
        sim.offline()
        # the first retry after the loss is immediate and fails: the next one is 10 s away
        assert sim.wait_until(lambda: sample(reg, "lineguard_plc_errors_total", kind="connection") >= 1, 3.0)
        feed(link, [2, 3])
        sim.online()
        time.sleep(0.2)
        assert not link.health().connected and link.health().queued_results == 2
    finally:
        t0 = time.monotonic()
        link.stop(timeout_s=2.0)
    assert time.monotonic() - t0 < 2.0
    assert records.by_part() == {p: [PlcOutcome.WRITTEN] for p in (1, 2, 3)}
    a = audit(sim, reg, range(1, 4))
    assert a.ok and a.written == 3, a


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
