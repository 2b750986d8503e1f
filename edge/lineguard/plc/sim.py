"""PLC simulator: a pymodbus Modbus TCP server that plays the PLC side of docs/plc.md.

Used by the demo, the tests and commissioning without the real PLC (``lineguard plc-sim``).
It issues triggers (part ids) at a rate, acknowledges results, and can be told to be slow,
drop connections, stop acking or refuse writes. It records every result block it receives.
It is the peer of the link, not part of the service: the service never imports this module.

Runs its asyncio loop in a background thread; all public methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer, ModbusTlsServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from lineguard.plc.codec import encode
from lineguard.plc.config import RegisterMapConfig
from lineguard.plc.regmap import STATUS_BITS, RegisterMap

_WRITE_CODES = (6, 16, 23)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedResult:
    """One result block as the simulated PLC received it."""

    seq: int
    part_id: int
    verdict: int
    defect_class: int
    score: float
    flags: int
    t_ns: int  # monotonic receive time
    class_guess: int = 0  # 0 also when the map writes no class_guess register
    class_confidence: float = float("nan")  # as written (e.g. per mille); NaN when not written


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (tests and the demo start the simulator on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PlcSimulator:
    """In-process simulated PLC. ``start()`` returns once it listens on ``host:port``."""

    def __init__(
        self,
        *,
        registers: RegisterMapConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        n_registers: int = 100,
        ack: bool = True,
        ack_delay_ms: float = 0.0,
        response_delay_ms: float = 0.0,
        tls: ssl.SSLContext | None = None,
        serial_port: str | None = None,
        serial_parity: str = "E",
    ) -> None:
        """``tls``: serve Modbus/TCP Security with this server context; ``serial_port``: serve
        Modbus RTU (19200 baud, ``serial_parity``) on that device instead of TCP (``host``/``port`` unused)."""
        self.cfg = registers or RegisterMapConfig()
        self._tls = tls
        self._serial_port = serial_port
        self._serial_parity = serial_parity
        self.map = RegisterMap(cfg=self.cfg)
        self.host = host
        self.port = port or free_port(host)
        self._n_regs = n_registers
        self._lock = threading.Lock()
        self._ack = ack
        self._ack_delay_s = ack_delay_ms / 1000.0
        self._delay_s = response_delay_ms / 1000.0
        self._refuse_writes = False
        self._stall_result_s = 0.0  # one-shot: hold the reply of the next result write this long
        self._inputs = {"trigger_seq": 0, "trigger_part_id": 0, "recipe_request": 0, "result_ack": 0}
        self._image: dict[int, int] = {}  # every register LineGuard wrote: address -> word
        self._results: list[ReceivedResult] = []
        self._triggers: list[tuple[int, int]] = []  # (part_id, t_ns)
        self._heartbeats: list[tuple[int, int, int]] = []  # (t_ns, heartbeat, status)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusBaseServer | None = None
        self._trigger_task: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, *, listen: bool = True) -> PlcSimulator:
        """Start the loop; ``listen=False`` keeps the PLC "absent" until ``online()``."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="plc-sim", daemon=True)
        self._thread.start()
        ready.wait(5)
        if listen:
            self.online()
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self.stop_triggers()
        self.offline()

        async def _cancel_rest() -> None:
            # request handlers still sleeping in a response delay: cancel, do not leak them
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self._call(_cancel_rest)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> PlcSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro_fn: Callable[[], Any], timeout_s: float = 5.0) -> Any:
        assert self._loop is not None, "simulator not started"
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout_s)

    def online(self) -> None:
        """(Re)open the listener on the same port: the PLC is (back) on the network."""

        async def _up() -> None:
            if self._server is not None:
                return
            device = SimDevice(
                id=self.cfg.unit_id,
                simdata=[SimData(0, count=self._n_regs, values=0, datatype=SimType.REGISTERS)],
                action=self._action,
            )
            if self._serial_port is not None:
                self._server = ModbusSerialServer(
                    device, port=self._serial_port, baudrate=19200, parity=self._serial_parity
                )
            elif self._tls is not None:
                self._server = ModbusTlsServer(device, address=(self.host, self.port), sslctx=self._tls)
            else:
                self._server = ModbusTcpServer(device, address=(self.host, self.port))
            await self._server.serve_forever(background=True)

        self._call(_up)

    def offline(self) -> None:
        """Close the listener and every connection: the PLC disappeared (power, cable)."""

        async def _down() -> None:
            if self._server is not None:
                await self._server.shutdown()  # type: ignore[no-untyped-call]
                self._server = None

        self._call(_down)

    def drop_connections(self) -> None:
        """Close every client connection but keep listening (a switch reboot, a PLC RST)."""

        async def _drop() -> None:
            if self._server is not None:
                for conn in list(self._server.active_connections.values()):
                    conn.close()

        self._call(_drop)

    # ---- behaviour knobs ---------------------------------------------------------------------
    def set_acking(self, on: bool) -> None:
        """Stop / resume acknowledging; on resume the result on display is acked at once."""
        with self._lock:
            self._ack = on
            if on and self._results:
                self._inputs["result_ack"] = self._results[-1].seq

    def set_ack_delay_ms(self, ms: float) -> None:
        with self._lock:
            self._ack_delay_s = ms / 1000.0

    def set_response_delay_ms(self, ms: float) -> None:
        """Every response is delayed by ``ms``: a PLC slower than the deadline."""
        with self._lock:
            self._delay_s = ms / 1000.0

    def stall_after_next_result(self, ms: float) -> None:
        """Apply the next result block, then hold its reply for ``ms`` (once): a write that landed
        while its answer never reaches LineGuard in time (a reply lost when the link breaks)."""
        with self._lock:
            self._stall_result_s = ms / 1000.0

    def set_refuse_writes(self, on: bool) -> None:
        """Answer every write with exception 2 (illegal data address)."""
        with self._lock:
            self._refuse_writes = on

    def set_recipe_request(self, recipe: int) -> None:
        with self._lock:
            self._inputs["recipe_request"] = recipe

    def trigger(self, part_id: int) -> None:
        """Announce a part: write its id, then bump trigger_seq (what a PLC program does)."""
        with self._lock:
            self._inputs["trigger_part_id"] = part_id
            self._inputs["trigger_seq"] = (self._inputs["trigger_seq"] + 1) & 0xFFFF
            self._triggers.append((part_id, time.monotonic_ns()))

    def start_triggers(self, rate_hz: float, *, first_part_id: int = 1, count: int | None = None) -> None:
        """Trigger parts ``first_part_id, +1, ...`` at ``rate_hz`` (``count`` of them, or until stopped)."""
        assert self._loop is not None, "simulator not started"

        async def _gen() -> None:
            period = 1.0 / rate_hz
            t_next = time.monotonic()
            pid = first_part_id
            while count is None or pid < first_part_id + count:
                self.trigger(pid)
                pid += 1
                t_next += period
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))

        def _spawn() -> None:
            self._trigger_task = asyncio.ensure_future(_gen())

        self._loop.call_soon_threadsafe(_spawn)

    def stop_triggers(self) -> None:
        if self._loop is not None and self._trigger_task is not None:
            self._loop.call_soon_threadsafe(self._trigger_task.cancel)

    # ---- observation -----------------------------------------------------------------------
    def results(self) -> list[ReceivedResult]:
        """Every result block received, including a re-write of the same seq after a reconnect."""
        with self._lock:
            return list(self._results)

    def verdicts_by_part(self) -> dict[int, set[tuple[int, int]]]:
        """part_id -> distinct (seq, verdict) it received; exactly one entry per part is the contract."""
        out: dict[int, set[tuple[int, int]]] = {}
        for r in self.results():
            out.setdefault(r.part_id, set()).add((r.seq, r.verdict))
        return out

    def triggers(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(self._triggers)

    def heartbeats(self) -> list[tuple[int, int, int]]:
        with self._lock:
            return list(self._heartbeats)

    def register(self, address: int) -> int:
        """A word LineGuard wrote (0 when never written)."""
        with self._lock:
            return self._image.get(address, 0)

    def status_bits(self) -> dict[str, bool]:
        word = self.register(self.cfg.status.address)
        return {name: bool(word >> bit & 1) for name, bit in STATUS_BITS.items()}

    def wait_until(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.002)
        return pred()

    # ---- the PLC side of the protocol (runs in the server's loop) ---------------------------
    async def _action(
        self, fc: int, start: int, address: int, count: int, regs: list[int], values: list[int] | list[bool] | None
    ) -> ExcCodes | None:
        with self._lock:
            delay, refuse = self._delay_s, self._refuse_writes
        if delay > 0:
            await asyncio.sleep(delay)
        is_write = fc in _WRITE_CODES and values is not None
        if is_write and refuse:
            return ExcCodes.ILLEGAL_ADDRESS
        stall = 0.0
        with self._lock:
            self._publish_inputs(regs, start)
            if is_write:
                assert values is not None
                if self._on_write(address, [int(v) for v in values]):
                    stall, self._stall_result_s = self._stall_result_s, 0.0
                if stall > 0:  # the device holds the block before its reply
                    for i, v in enumerate(values):
                        regs[address - start + i] = int(v)
        if stall > 0:
            await asyncio.sleep(stall)
            assert values is not None
            # pymodbus stores ``values`` when this returns: make that a no-op, so the held-back
            # request cannot overwrite a newer block written meanwhile on another connection
            values[:] = regs[address - start : address - start + len(values)]  # type: ignore[assignment]
        return None

    def _publish_inputs(self, regs: list[int], start: int) -> None:
        """Copy the PLC-owned words into the server memory before the request is served."""
        for name, spec in self.cfg.input_fields().items():
            for i, word in enumerate(encode(self._inputs[name], spec.dtype, self.cfg.word_order)):
                regs[spec.address + i - start] = word

    def _on_write(self, address: int, words: list[int]) -> bool:
        """Store the words; True when they completed a result block (result_seq written)."""
        now = time.monotonic_ns()
        for i, w in enumerate(words):
            self._image[address + i] = w
        touched = range(address, address + len(words))
        if self.cfg.heartbeat.address in touched:
            self._heartbeats.append(
                (now, self._image.get(self.cfg.heartbeat.address, 0), self._image.get(self.cfg.status.address, 0))
            )
        if self.cfg.result_seq.address not in touched:
            return False
        block = self.map.decode_result(self._image)
        seq = int(block["result_seq"])
        self._results.append(
            ReceivedResult(
                seq=seq,
                part_id=int(block["part_id"]),
                verdict=int(block["verdict"]),
                defect_class=int(block["defect_class"]),
                score=float(block["score"]),
                flags=int(block["result_flags"]),
                t_ns=now,
                class_guess=int(block.get("class_guess", 0)),
                class_confidence=float(block.get("class_confidence", float("nan"))),
            )
        )
        if self._ack:
            if self._ack_delay_s > 0 and self._loop is not None:
                self._loop.call_later(self._ack_delay_s, self._set_ack, seq)
            else:
                self._inputs["result_ack"] = seq
        return True

    def _set_ack(self, seq: int) -> None:
        with self._lock:
            if self._ack:
                self._inputs["result_ack"] = seq
