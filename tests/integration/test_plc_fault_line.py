"""PLC faults on a running line (issue 21, part 5): the inspection service with a replay source
against an independent Modbus server (uModbus, not LineGuard's pymodbus simulator) on loopback.

Each case asserts exact counts at the PLC (the result blocks uModbus received) and in the decision
log (exactly one line per part, whose ``plc`` field says what the PLC got):

- a PLC that never acknowledges: one flight-recorder dump for the whole episode, and
  ``run --until-finished`` exits within its bound, exit code 3, with the unacknowledged count;
- a PLC absent for the first second: parts whose deadline passed meanwhile are ``missed_deadline``
  and never written later; the link is up <= 2.5 s after the PLC listens;
- a PLC killed for 1.5 s: the same, around the outage; one fault episode;
- SIGTERM while the PLC is down: buffered results are in the decision log, one log line, exit 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from umodbus.server.tcp import RequestHandler, get_server

from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.engines.synthetic import build_synthetic_bundle, synthetic_image
from lineguard.plc.codec import decode
from lineguard.plc.config import DataType, PlcConfig, RegisterMapConfig
from lineguard.plc.sim import free_port
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import ReplaySourceConfig

pytestmark = pytest.mark.timeout(120)
REGS = RegisterMapConfig()  # the documented default map, unit 1
N_REGS = 40
LINK_BACK_S = 2.5  # issue 21 target: link back <= 2.5 s after the PLC listens again
DUMP = "transactions:\n"  # the flight recorder's dump header ("... last N transactions:")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(addr, handler)
        self.clients: list[socket.socket] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        self.clients.append(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a connection we cut on purpose (kill) is not an error worth a traceback


class UModbusPlc:
    """An independent PLC on uModbus: it records every result block it receives (with its receive
    time) and copies result_seq into result_ack, unless told not to. ``kill()`` closes the listening
    socket and every connection (connects are then refused); ``listen()`` serves again on the same port."""

    def __init__(self, *, ack: bool = True) -> None:
        self.port = free_port()
        self.ack = ack
        self.store = [0] * N_REGS
        self.blocks: list[tuple[float, int, int, int, int]] = []  # (t_recv, part_id, seq, verdict, flags)
        self.t_first_write: float | None = None  # first write of any kind since the last listen()
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def listen(self) -> UModbusPlc:
        server = get_server(_Server, ("127.0.0.1", self.port), RequestHandler)
        addrs = list(range(N_REGS))

        @server.route(slave_ids=[REGS.unit_id], function_codes=[3], addresses=addrs)  # type: ignore[misc]
        def read(slave_id: int, function_code: int, address: int) -> int:
            with self.lock:
                return self.store[address]

        @server.route(slave_ids=[REGS.unit_id], function_codes=[6, 16], addresses=addrs)  # type: ignore[misc]
        def write(slave_id: int, function_code: int, address: int, value: int) -> None:
            with self.lock:
                if self.t_first_write is None:
                    self.t_first_write = time.monotonic()
                self.store[address] = value
                if address == REGS.result_seq.address:  # written last in the result block
                    part = decode(self.store[3:5], DataType.U32, "big")
                    self.blocks.append((time.monotonic(), part, value, self.store[5], self.store[8]))
                    if self.ack:
                        self.store[REGS.result_ack.address] = value

        with self.lock:
            self.t_first_write = None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def kill(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for c in server.clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def parts(self) -> Counter[int]:
        """part_id -> how many distinct result blocks (seq) the PLC received for it."""
        with self.lock:
            return Counter(part for part, _seq in {(b[1], b[2]) for b in self.blocks})


@pytest.fixture()
def frames_dir(tmp_path: Path) -> Callable[[int], Path]:
    bundle = build_synthetic_bundle(tmp_path / "bundle", input_size=64)
    spec = bundle.manifest.input

    def make(n: int) -> Path:
        d = tmp_path / "frames"
        d.mkdir()
        rng = np.random.default_rng(7)
        for i in range(n):
            cv2.imwrite(str(d / f"{i:04d}.png"), synthetic_image("good", spec, rng))  # type: ignore[arg-type]
        return d

    return make


def _plc_section(port: int, **kw: Any) -> dict[str, Any]:
    return {"transport": {"type": "tcp", "host": "127.0.0.1", "port": port}, "heartbeat_period_ms": 100, **kw}


def _decision_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _one_line_per_part(lines: list[dict[str, Any]], n: int) -> dict[int, str]:
    """part_id -> plc outcome; fails unless parts 1..n each have exactly one line."""
    ids = Counter(int(r["part_id"]) for r in lines)
    assert sorted(ids) == list(range(1, n + 1)) and set(ids.values()) == {1}, ids
    return {int(r["part_id"]): str(r["plc"]) for r in lines}


# ---------------------------------------------------------------- in-process service

def _service(tmp: Path, frames: Path, plc: dict[str, Any], rate: float) -> InspectionService:
    cfg = LineConfig(
        bundle=BundleSection(path=tmp / "bundle"),
        source=ReplaySourceConfig(type="replay", paths=(str(frames),), rate_parts_per_s=rate),
        plc=PlcConfig.model_validate(plc),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(enabled=False),
        service=ServiceSection(decision_log_path=tmp / "decisions.jsonl"),
    )
    return InspectionService.from_config(cfg, registry=CollectorRegistry())


def _wait(cond: Callable[[], bool], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def _finish(service: InspectionService, timeout_s: float = 30.0) -> None:
    _wait(lambda: service.finished(ack_timeout_s=2.0), timeout_s)
    service.stop()


def _outage_checks(at_plc: Counter[int], plc: dict[int, str], n: int) -> None:
    """Exactly once at the PLC for 'written'; never for 'missed_deadline' (not written late)."""
    assert set(plc.values()) <= {"written", "missed_deadline", "unacknowledged"}, Counter(plc.values())
    for pid in range(1, n + 1):
        if plc[pid] == "written":
            assert at_plc[pid] == 1, (pid, at_plc[pid])
        elif plc[pid] == "missed_deadline":
            assert pid not in at_plc, f"part {pid}: stale result written after the outage"
    assert not set(at_plc) - set(range(1, n + 1))


def test_plc_absent_for_the_first_second(tmp_path: Path, frames_dir: Callable[[int], Path],
                                         caplog: pytest.LogCaptureFixture) -> None:
    n, rate = 40, 20.0
    frames = frames_dir(n)
    plc = UModbusPlc()
    svc = _service(tmp_path, frames, _plc_section(plc.port, deadline_ms=150), rate)
    caplog.set_level(logging.WARNING, logger="lineguard.plc")
    svc.start()
    try:
        _wait(lambda: svc.stats.decided >= 1, 20)
        time.sleep(1.0)
        plc.listen()
        t_listen = time.monotonic()
        _finish(svc)
    finally:
        plc.kill()
    assert plc.t_first_write is not None and plc.t_first_write - t_listen <= LINK_BACK_S
    out = _one_line_per_part(_decision_log(tmp_path / "decisions.jsonl"), n)
    at_plc = plc.parts()
    _outage_checks(at_plc, out, n)
    missed = sorted(p for p, o in out.items() if o == "missed_deadline")
    # the parts of the first second missed their deadline; every later part reached the PLC once
    assert len(missed) >= 10 and missed == list(range(1, len(missed) + 1)), missed
    assert sorted(at_plc) == list(range(len(missed) + 1, n + 1))
    assert svc.plc.outcomes == {"missed_deadline": len(missed), "written": n - len(missed)}
    assert caplog.text.count(DUMP) == 1  # one fault episode, one dump


def test_plc_killed_for_a_second_and_a_half(tmp_path: Path, frames_dir: Callable[[int], Path],
                                            caplog: pytest.LogCaptureFixture) -> None:
    n, rate = 70, 20.0
    frames = frames_dir(n)
    plc = UModbusPlc().listen()
    svc = _service(tmp_path, frames, _plc_section(plc.port, deadline_ms=150, result_buffer_size=64), rate)
    caplog.set_level(logging.WARNING, logger="lineguard.plc")
    svc.start()
    try:
        _wait(lambda: len(plc.parts()) >= 10, 20)
        plc.kill()
        time.sleep(1.5)
        plc.listen()
        t_listen = time.monotonic()
        _finish(svc)
    finally:
        plc.kill()
    assert plc.t_first_write is not None and plc.t_first_write - t_listen <= LINK_BACK_S
    out = _one_line_per_part(_decision_log(tmp_path / "decisions.jsonl"), n)
    at_plc = plc.parts()
    _outage_checks(at_plc, out, n)
    lost = sorted(p for p, o in out.items() if o != "written")
    # one contiguous gap: the parts of the outage, none of them written late, at most one (the
    # result on the wire when the PLC died) unacknowledged
    assert len(lost) >= 15 and lost == list(range(lost[0], lost[-1] + 1)), lost
    assert sum(1 for o in out.values() if o == "unacknowledged") <= 1
    written = {p for p, o in out.items() if o == "written"}
    assert written == set(at_plc) - {p for p, o in out.items() if o == "unacknowledged"}
    missed = sum(1 for o in out.values() if o == "missed_deadline")
    reg = svc.registry
    assert reg.get_sample_value("lineguard_plc_failsafe_verdicts_total", {"reason": "missed_deadline"}) == missed
    assert reg.get_sample_value("lineguard_plc_fault_episodes_total") == 1
    assert caplog.text.count(DUMP) == 1
    plc_lines = [r for r in caplog.records if r.name.startswith("lineguard.plc")]
    assert len(plc_lines) <= 8, [r.getMessage()[:80] for r in plc_lines]  # a handful, not one per part


# ---------------------------------------------------------------- lineguard run, its own process

def _write_config(tmp: Path, frames: Path, plc: dict[str, Any], rate: float) -> Path:
    doc = {
        "bundle": {"path": str(tmp / "bundle")},
        "source": {"type": "replay", "paths": [str(frames)], "rate_parts_per_s": rate},
        "plc": plc,
        "publisher": {"enabled": False},
        "metrics": {"enabled": False},
        "service": {"decision_log_path": str(tmp / "decisions.jsonl")},
    }
    path = tmp / "line.yaml"
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return path


def _lineguard(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lineguard.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_never_acknowledging_plc_until_finished(tmp_path: Path, frames_dir: Callable[[int], Path]) -> None:
    n = 20
    frames = frames_dir(n)
    plc = UModbusPlc(ack=False).listen()
    cfg = _write_config(tmp_path, frames, _plc_section(plc.port, deadline_ms=5000, result_buffer_size=8), 50.0)
    try:
        proc = _lineguard("run", "--config", str(cfg), "--until-finished", "--ack-timeout-s", "1")
        out, err = proc.communicate(timeout=60)  # before the fix it never exited
    finally:
        plc.kill()
    assert proc.returncode == 3, (out, err)
    lines = _one_line_per_part(_decision_log(tmp_path / "decisions.jsonl"), n)
    # part 1 is on the wire, never acknowledged; 7 wait behind it; the buffer (8) is full for the rest
    assert Counter(lines.values()) == {"unacknowledged": 1, "unsent": 7, "overflow": 12}
    assert lines[1] == "unacknowledged" and plc.parts() == {1: 1}
    assert "never acknowledged 20" in out
    assert err.count(DUMP) == 1, err  # one dump for the whole episode (was one per overflow)
    assert err.count("PLC link stopped with 8 result(s) the PLC never acknowledged") == 1
    assert len([ln for ln in err.splitlines() if "lineguard.plc" in ln]) <= 10, err


def test_sigterm_while_the_plc_is_down(tmp_path: Path, frames_dir: Callable[[int], Path]) -> None:
    n = 200  # 10 s of parts: the run is still going when SIGTERM comes
    frames = frames_dir(n)
    plc = UModbusPlc().listen()
    # the deadline is long, so results decided during the outage are still buffered at SIGTERM
    cfg = _write_config(tmp_path, frames, _plc_section(plc.port, deadline_ms=5000, result_buffer_size=64), 20.0)
    log_path = tmp_path / "decisions.jsonl"
    proc = _lineguard("run", "--config", str(cfg))
    try:
        _wait(lambda: len(plc.parts()) >= 10, 60)
        plc.kill()
        time.sleep(0.6)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        plc.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (out, err)
    frames_seen = int(out.split("frames ")[1].split()[0])
    lines = _one_line_per_part(_decision_log(log_path), frames_seen)
    buffered = {p for p, o in lines.items() if o in ("unsent", "unacknowledged")}
    assert set(lines.values()) <= {"written", "unsent", "unacknowledged"}, Counter(lines.values())
    assert len(buffered) >= 5  # ~0.6 s at 20 parts/s plus the shutdown fail-safes
    at_plc = plc.parts()
    assert {p for p, o in lines.items() if o == "written"} == set(at_plc) - buffered
    assert all(at_plc[p] == 1 for p in at_plc)
    stopped = [ln for ln in err.splitlines() if "PLC link stopped with" in ln]
    assert len(stopped) == 1 and f"with {len(buffered)} result(s)" in stopped[0], stopped
