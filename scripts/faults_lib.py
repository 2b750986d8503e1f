"""Shared parts of ``scripts/bench_faults.py``: an independent PLC on uModbus and the pure audit of
one fault run (what the PLC received and what the decision log holds, against what each replayed
file should have produced).

Where it sits: outside the product. The bench drives the real ``lineguard run`` process (replay
source -> ONNX Runtime -> decision -> PLC link over Modbus TCP, decision log, publisher) against
this PLC and the real ``lineguard sink``; this module only observes and counts.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lineguard.plc.codec import decode
from lineguard.plc.config import DataType, RegisterMapConfig
from lineguard.plc.sim import free_port

REGS = RegisterMapConfig()  # the documented default map, unit 1
N_REGS = 40
VERDICT_CODES = {"accept": 1, "reject": 2, "recheck": 3, "failsafe": 4}
FLAG_DEADLINE, FLAG_DECISION = 0b01, 0b10


class Block(NamedTuple):
    """One result block as the PLC received it (written when result_seq, the block's last word, lands)."""

    t: float  # time.monotonic() at the PLC
    part_id: int
    seq: int
    verdict: int
    score: int  # score register (score * 1000, u16)
    flags: int


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
        pass  # a connection cut on purpose (kill) is not an error worth a traceback


class UModbusPlc:
    """An independent PLC (uModbus, not LineGuard's pymodbus simulator): records every result block
    and copies result_seq into result_ack unless ``ack`` is False. ``kill()`` closes the listening
    socket and every connection (connects are refused); ``listen()`` serves the same port again.
    ``stall_every`` = N > 0: every N-th result block is stored at once but answered ``stall_s``
    late (a reply lost to a slow or broken network after the PLC took the block)."""

    def __init__(self, *, ack: bool = True, stall_every: int = 0, stall_s: float = 0.0) -> None:
        self.port = free_port()
        self.ack = ack
        self.stall_every, self.stall_s = stall_every, stall_s
        self.stalled = 0  # replies held back
        self.store = [0] * N_REGS
        self.blocks: list[Block] = []
        self.t_first_write: float | None = None  # first write of any kind since the last listen()
        self.lock = threading.Lock()
        self._server: _Server | None = None

    def listen(self) -> UModbusPlc:
        from umodbus.server.tcp import RequestHandler, get_server  # dev dependency

        server = get_server(_Server, ("127.0.0.1", self.port), RequestHandler)
        addrs = list(range(N_REGS))

        @server.route(slave_ids=[REGS.unit_id], function_codes=[3], addresses=addrs)  # type: ignore[untyped-decorator]
        def read(slave_id: int, function_code: int, address: int) -> int:
            with self.lock:
                return self.store[address]

        @server.route(slave_ids=[REGS.unit_id], function_codes=[6, 16], addresses=addrs)  # type: ignore[untyped-decorator]
        def write(slave_id: int, function_code: int, address: int, value: int) -> None:
            stall = False
            with self.lock:
                if self.t_first_write is None:
                    self.t_first_write = time.monotonic()
                self.store[address] = value
                if address == REGS.result_seq.address:
                    s = self.store
                    part = decode(s[3:5], DataType.U32, "big")
                    self.blocks.append(Block(time.monotonic(), int(part), value, s[5], s[7], s[8]))
                    if self.ack:
                        s[REGS.result_ack.address] = value
                    stall = self.stall_every > 0 and len(self.blocks) % self.stall_every == 0
                    self.stalled += stall
            if stall:  # the block is stored (readable on another connection); only its reply waits
                time.sleep(self.stall_s)

        with self.lock:
            self.t_first_write = None
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
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

    def received(self) -> list[Block]:
        with self.lock:
            return list(self.blocks)


# ------------------------------------------------------------------------------------ audit (pure)

@dataclass(frozen=True, slots=True)
class Expect:
    """What a replayed file should produce: its verdict and score (from ``lineguard score``), or a
    decision fail-safe when the file cannot be read."""

    verdict: str  # accept / reject / recheck, or "unreadable"
    score: float = float("nan")


@dataclass(slots=True)
class Audit:
    triggered: int
    answered: int  # distinct parts with a result block at the PLC
    failsafe: int  # parts answered with a fail-safe flag (deadline or decision)
    missed_deadline: int  # decision-log lines with plc = missed_deadline
    doubled: int  # parts with more than one result at the PLC or more than one decision-log line
    shifted: int  # parts whose PLC result or log line carries another file's verdict / score
    unanswered_connected: int  # parts without a result at the PLC outside every fault window
    log_lines: int
    log_exactly_once: bool  # every triggered part has exactly one decision-log line, no other line
    log_vs_plc: int  # parts whose decision-log ``plc`` outcome contradicts what the PLC received
    outcomes: dict[str, int] = field(default_factory=dict)


def doubled_parts(blocks: Iterable[Block], log_ids: Iterable[int]) -> set[int]:
    """Parts the PLC received more than once (distinct result_seq) or logged on more than one line.
    A block re-read with the same seq is the same write, not a double."""
    at_plc = Counter(part for part, _seq in {(b.part_id, b.seq) for b in blocks})
    in_log = Counter(log_ids)
    return {p for p, n in at_plc.items() if n > 1} | {p for p, n in in_log.items() if n > 1}


def shifted_parts(blocks: Iterable[Block], log: Iterable[Mapping[str, Any]], expect: Mapping[int, Expect],
                  *, score_tol: float = 1e-3) -> set[int]:
    """Parts whose result is not their own file's: a judged result with another verdict or score, a
    decision fail-safe on a readable file, a judgement of an unreadable file, or an id outside the
    stream. Deadline fail-safes carry no score and are not compared."""
    bad: set[int] = set()
    for b in blocks:
        e = expect.get(b.part_id)
        if e is None:
            bad.add(b.part_id)
        elif b.flags & FLAG_DECISION:
            if e.verdict != "unreadable":
                bad.add(b.part_id)
        elif not b.flags & FLAG_DEADLINE and (
                e.verdict == "unreadable" or b.verdict != VERDICT_CODES[e.verdict]
                or abs(b.score - round(min(e.score, 65.535) * 1000)) > 1):
            bad.add(b.part_id)
    for r in log:
        pid = int(r["part_id"])
        e = expect.get(pid)
        reasons = list(r.get("reasons") or [])
        if e is None:
            bad.add(pid)
        elif e.verdict == "unreadable":
            if not (r["failsafe"] and reasons and reasons[0] == "unreadable_frame"):
                bad.add(pid)
        elif r["failsafe"]:
            if reasons and reasons[0] == "unreadable_frame":
                bad.add(pid)
        elif r["verdict"] != e.verdict or abs(float(r["anomaly_score"]) - e.score) > score_tol:
            bad.add(pid)
    return bad


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def log_records(stderr: str) -> int:
    """Log records in the service's stderr: lines that start with the log format's timestamp (a
    multi-line record, like the PLC flight recorder's dump, is one record)."""
    return sum(1 for ln in stderr.splitlines() if _RECORD.match(ln))


REACHED = {"written", "failsafe_deadline"}  # the PLC has a block for the part
NEVER_WRITTEN = {"missed_deadline", "overflow", "unsent"}  # the PLC must have none (e.g. stale, written late)


def log_contradicts_plc(blocks: Iterable[Block], log: Iterable[Mapping[str, Any]]) -> set[int]:
    """Parts the log says reached the PLC that it never got, or says were never written that it got
    anyway (a stale result written after an outage). ``unacknowledged`` may or may not have arrived."""
    at_plc = {b.part_id for b in blocks}
    bad: set[int] = set()
    for r in log:
        pid, outcome = int(r["part_id"]), str(r.get("plc", ""))
        if (outcome in REACHED and pid not in at_plc) or (outcome in NEVER_WRITTEN and pid in at_plc):
            bad.add(pid)
    return bad


def in_windows(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(lo <= t <= hi for lo, hi in windows)


def audit(*, triggered: Sequence[int], blocks: Sequence[Block], log: Sequence[Mapping[str, Any]],
          expect: Mapping[int, Expect], fault_windows_utc: Sequence[tuple[float, float]]) -> Audit:
    """Count one run. ``triggered``: the part ids the source produced; ``fault_windows_utc``: wall
    times (decision-log ``t_utc``) when the PLC was not connected, widened by the caller for the
    reconnect and the deadline; a part missing at the PLC outside them counts as unanswered."""
    log_ids = [int(r["part_id"]) for r in log]
    answered = {b.part_id for b in blocks}
    failsafe = {b.part_id for b in blocks if b.flags}
    last_line = {int(r["part_id"]): r for r in log}
    unanswered = [p for p in triggered if p not in answered
                  and not (p in last_line and in_windows(float(last_line[p]["t_utc"]), fault_windows_utc))]
    return Audit(
        triggered=len(triggered),
        answered=len(answered),
        failsafe=len(failsafe),
        missed_deadline=sum(1 for r in log if r.get("plc") == "missed_deadline"),
        doubled=len(doubled_parts(blocks, log_ids)),
        shifted=len(shifted_parts(blocks, log, expect)),
        unanswered_connected=len(unanswered),
        log_lines=len(log),
        log_exactly_once=sorted(log_ids) == sorted(triggered) and len(set(log_ids)) == len(log_ids),
        log_vs_plc=len(log_contradicts_plc(blocks, log)),
        outcomes=dict(Counter(str(r.get("plc", "")) for r in log)),
    )
