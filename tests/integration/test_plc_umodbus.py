"""Cross-check against a second, independent Modbus implementation: a uModbus TCP server.

The register image the link produces is read back word by word from uModbus' own data
store, so a codec or framing mistake shared by LineGuard and its pymodbus-based simulator
would still be caught here.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry
from umodbus.server.tcp import RequestHandler, get_server

from lineguard.contracts import Verdict
from lineguard.plc import PlcConfig, PlcLink
from lineguard.plc.codec import decode
from lineguard.plc.config import DataType, FieldSpec, RegisterMapConfig, TcpTransportConfig
from lineguard.plc.sim import free_port
from lineguard.plc.testing import decision, sample, settle

pytestmark = pytest.mark.timeout(60)
UNIT = 3
N_REGS = 40


class UModbusPlc:
    """A minimal PLC on uModbus: a data store, acks every result_seq it receives."""

    def __init__(self, regs: RegisterMapConfig) -> None:
        self.store = [0] * N_REGS
        self.blocks: list[list[int]] = []  # register image right after each result_seq write
        self.lock = threading.Lock()
        self.port = free_port()
        socketserver.TCPServer.allow_reuse_address = True
        self.app = get_server(socketserver.TCPServer, ("127.0.0.1", self.port), RequestHandler)
        addrs = list(range(N_REGS))

        @self.app.route(slave_ids=[UNIT], function_codes=[3], addresses=addrs)  # type: ignore[misc]
        def read(slave_id: int, function_code: int, address: int) -> int:
            with self.lock:
                return self.store[address]

        @self.app.route(slave_ids=[UNIT], function_codes=[6, 16], addresses=addrs)  # type: ignore[misc]
        def write(slave_id: int, function_code: int, address: int, value: int) -> None:
            with self.lock:
                self.store[address] = value
                if address == regs.result_seq.address:  # seq is written last in its block
                    self.blocks.append(list(self.store))
                    self.store[regs.result_ack.address] = value

        self.thread = threading.Thread(target=self.app.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> UModbusPlc:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.shutdown()
        self.app.server_close()


# little word order and a float score: the non-default paths must also match an independent peer
REGS = RegisterMapConfig(
    unit_id=UNIT,
    word_order="little",
    score=FieldSpec(address=7, dtype=DataType.F32),
    result_flags=FieldSpec(address=10),
    result_seq=FieldSpec(address=11),
    # apart from the seq run: this peer snapshots a block when it stores result_seq, mid-request
    class_guess=FieldSpec(address=15),
    class_confidence=FieldSpec(address=16, dtype=DataType.F32),
)


@pytest.fixture
def plc() -> Iterator[UModbusPlc]:
    with UModbusPlc(REGS) as p:
        yield p


def test_every_register_read_back_from_umodbus(plc: UModbusPlc) -> None:
    reg = CollectorRegistry()
    cfg = PlcConfig(
        transport=TcpTransportConfig(port=plc.port),
        registers=REGS,
        heartbeat_period_ms=50,
        deadline_ms=300,
        result_buffer_size=64,
    )
    link = PlcLink.from_config(cfg, metrics_registry=reg)
    link.start()
    parts = list(range(100_000, 100_030))
    try:
        link.set_defect_classes(["scratch", "dent"])
        link.set_active_recipe(42)
        link.set_status(ready=True, camera_ok=True)
        for pid in parts:
            link.expect(pid, 0 if pid == parts[-1] else time.monotonic_ns())
            if pid != parts[-1]:  # the last one is already past its deadline: fail-safe
                link.submit(decision(pid, Verdict.REJECT, defect="scratch", score=pid / 1e6))
        assert settle(link, 5.0)
        link.set_status(ready=True, camera_ok=True, degraded=True)
        assert plc_wait(lambda: plc.store[REGS.status.address] == 0b10101)
    finally:
        link.stop()
    assert len(plc.blocks) == len(parts)
    for pid, img in zip(parts, plc.blocks, strict=True):
        part = decode(img[3:5], DataType.U32, "little")
        score = decode(img[7:9], DataType.F32, "little")
        assert part == pid
        if pid == parts[-1]:
            assert (img[5], img[6], img[10]) == (int(Verdict.REJECT), 0, 1)  # fail-safe flag
        else:
            assert (img[5], img[6], img[10]) == (int(Verdict.REJECT), 1, 0)
            assert score == pytest.approx(pid / 1e6, rel=1e-6)
    assert [img[11] for img in plc.blocks] == list(range(1, 31))
    assert plc.store[REGS.active_recipe.address] == 42
    assert plc.store[REGS.heartbeat.address] > 0
    assert sample(reg, "lineguard_plc_errors_total", kind="timeout") == 0


def plc_wait(pred: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_umodbus_refuses_unknown_addresses(plc: UModbusPlc) -> None:
    reg = CollectorRegistry()
    regs = REGS.model_copy(update={"active_recipe": FieldSpec(address=N_REGS + 5)})
    cfg = PlcConfig(transport=TcpTransportConfig(port=plc.port), registers=regs, heartbeat_period_ms=50)
    link = PlcLink.from_config(cfg, metrics_registry=reg)
    link.start()
    try:
        assert plc_wait(lambda: sample(reg, "lineguard_plc_errors_total", kind="illegal_address") >= 2)
        link.submit(decision(1))  # results still flow: only the heartbeat's recipe word is refused
        assert settle(link, 3.0)
    finally:
        link.stop()
    assert len(plc.blocks) == 1 and plc.blocks[0][5] == int(Verdict.ACCEPT)


def test_recheck_guess_and_confidence_reach_an_independent_peer(plc: UModbusPlc) -> None:
    # issue 16: a recheck of an unknown defect still carries the classifier's best guess (code of
    # "dent" = 2) and its probability (f32 here) in the configured registers 15 and 16-17
    cfg = PlcConfig(transport=TcpTransportConfig(port=plc.port), registers=REGS, heartbeat_period_ms=50)
    link = PlcLink.from_config(cfg, metrics_registry=CollectorRegistry())
    link.start()
    try:
        link.set_defect_classes(["scratch", "dent"])
        link.submit(decision(7, Verdict.RECHECK, defect="unknown", guess="dent", confidence=0.4375))
        assert settle(link, 3.0)
    finally:
        link.stop()
    (img,) = plc.blocks
    assert (img[5], img[6], img[15]) == (int(Verdict.RECHECK), 255, 2)
    assert decode(img[16:18], DataType.F32, "little") == 0.4375
