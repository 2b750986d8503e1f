"""Hardware-in-the-loop check of the PLC link against the real PLC (excluded by default).

Run on the line with the PLC in a test mode that acks results (docs/plc.md):

    LINEGUARD_PLC_HOST=192.168.0.10 [LINEGUARD_PLC_PORT=502] [LINEGUARD_PLC_UNIT=1] \\
        pytest -m hil hil/test_plc_hil.py

It writes 50 results (acknowledged handshake), checks every one was acknowledged, measures the
write latency on the real network, and checks that the PLC's heartbeat view advances. Then 20
more through a local relay that loses every 5th reply: each is read back from the PLC, none
written twice or counted missed.
The environment variables are read here only because this is a test entry point.
"""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client import CollectorRegistry

from lineguard.plc import PlcConfig, PlcLink, PlcOutcome
from lineguard.plc.config import RegisterMapConfig, TcpTransportConfig
from lineguard.plc.relay import ReplyLossRelay
from lineguard.plc.testing import Records, feed, sample, settle

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]


@pytest.fixture
def cfg() -> PlcConfig:
    host = os.environ.get("LINEGUARD_PLC_HOST")
    if not host:
        pytest.skip("set LINEGUARD_PLC_HOST to the PLC's address")
    return PlcConfig(
        transport=TcpTransportConfig(host=host, port=int(os.environ.get("LINEGUARD_PLC_PORT", "502"))),
        registers=RegisterMapConfig(unit_id=int(os.environ.get("LINEGUARD_PLC_UNIT", "1"))),
        deadline_ms=500,
        result_buffer_size=64,
    )


def test_results_are_acknowledged_by_the_real_plc(cfg: PlcConfig) -> None:
    reg = CollectorRegistry()
    link = PlcLink.from_config(cfg, metrics_registry=reg)
    link.start()
    try:
        link.set_status(ready=True, model_loaded=True, camera_ok=True)
        feed(link, range(900_000, 900_050), period_s=0.02)
        assert settle(link, 30.0), link.health()
    finally:
        link.stop()
    assert sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="overflow") == 0
    assert sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="plc_rejected") == 0
    written = sum(sample(reg, "lineguard_plc_results_written_total", verdict=v) for v in ("1", "2", "3", "4"))
    assert written == 50
    lat = [tx.latency_us / 1000 for tx in link.recorder.snapshot() if tx.op == "write_regs" and not tx.error]
    print(f"PLC write latency on this network: median {sorted(lat)[len(lat) // 2]:.2f} ms, max {max(lat):.2f} ms")


def test_lost_replies_are_read_back_from_the_real_plc(cfg: PlcConfig) -> None:
    """Through a relay on this machine that swallows the PLC's reply to every 5th result write:
    the link times out, reconnects and reads result_seq back from the real PLC, so each of the 20
    results is written once and acknowledged, none counted missed (docs/plc.md, in-doubt results)."""
    assert isinstance(cfg.transport, TcpTransportConfig)
    relay = ReplyLossRelay((cfg.transport.host, cfg.transport.port),
                           result_seq_address=cfg.registers.result_seq.address, every=5).start()
    via = cfg.model_copy(update={"transport": TcpTransportConfig(host="127.0.0.1", port=relay.port)})
    reg = CollectorRegistry()
    link = PlcLink.from_config(via, metrics_registry=reg)
    records = Records()
    link.set_record_sink(records)
    link.start()
    try:
        for pid in range(900_100, 900_120):
            feed(link, [pid])
            assert settle(link, 10.0), link.health()
    finally:
        link.stop()
        relay.stop()
    assert relay.swallowed == 4, "the PLC was written to again after a read-back said it holds the result"
    assert records.by_part() == {p: [PlcOutcome.WRITTEN] for p in range(900_100, 900_120)}
    assert sample(reg, "lineguard_plc_failsafe_verdicts_total", reason="missed_deadline") == 0


def test_plc_absence_is_detected(cfg: PlcConfig) -> None:
    """Unplug the PLC cable when prompted (interactive; skipped unless LINEGUARD_PLC_UNPLUG=1)."""
    if os.environ.get("LINEGUARD_PLC_UNPLUG") != "1":
        pytest.skip("interactive: set LINEGUARD_PLC_UNPLUG=1")
    link = PlcLink.from_config(cfg)
    link.start()
    try:
        print("unplug the PLC cable within 20 s ...")
        end = time.monotonic() + 20
        while link.health().connected and time.monotonic() < end:
            time.sleep(0.05)
        assert not link.health().connected
    finally:
        link.stop()
