"""PLC link: the last stage of the edge data flow (Decision -> Modbus registers of the PLC).

One writer thread owns the Modbus client, the deadline scheduler (``ResultBook``) and the
heartbeat. Service threads only call the non-blocking methods ``expect``/``submit``/
``set_status``/``poll_*``; those never touch the network. The writer puts results first,
heartbeat/status second and PLC input polling third; it never retries on the hot path, never
writes a part twice with different verdicts, and never writes a late verdict over a fail-safe.

Faults: results whose part deadline passes while the link is down are never written later
(``missed_deadline``); one flight-recorder dump per fault episode (``FaultEpisodes``); per-part
warnings are throttled. Every part ends in exactly one record for the decision log (record sink).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision
from lineguard.plc.api import PlcHealth, PlcLinkLike, RecordSink
from lineguard.plc.book import Event, PlcOutcome, ResultBook
from lineguard.plc.config import PlcConfig
from lineguard.plc.connection import LinkConnection
from lineguard.plc.errors import PlcErrorKind, PlcTransactionError
from lineguard.plc.faults import LinkFaults
from lineguard.plc.ledger import PartLedger
from lineguard.plc.metrics import PlcMetrics
from lineguard.plc.recorder import FlightRecorder
from lineguard.plc.regmap import STATUS_BITS, PlcResult, RegisterMap, status_word
from lineguard.plc.transport import ModbusTransport

log = logging.getLogger(__name__)
TRIGGER_BACKLOG = 256  # announced part ids not yet taken by poll_trigger(); drop-oldest, counted
_MS = 1_000_000
ACK_OVERDUE_NS = 1_000_000_000  # a written result not acknowledged this long is a fault


class PlcLink:
    """Modbus link to the PLC with result handshake, heartbeat, deadlines and fail-safe verdicts."""

    def __init__(
        self,
        *,
        cfg: PlcConfig,
        transport: ModbusTransport,
        recorder: FlightRecorder,
        metrics: PlcMetrics,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.cfg = cfg
        self._t = transport
        self._rec = recorder
        self._m = metrics
        self._clock = clock_ns
        self._map = RegisterMap(cfg=cfg.registers)
        self._book_deadline_ns = int(cfg.deadline_ms * _MS)
        self._book = ResultBook(
            deadline_ns=self._book_deadline_ns,
            failsafe_verdict=cfg.failsafe_code,
            capacity=cfg.result_buffer_size,
            acknowledged=cfg.handshake == "acknowledged",
            unknown_code=cfg.registers.unknown_defect_code,
        )
        self._cv = threading.Condition()
        self._inbox: collections.deque[tuple[str, object, int]] = collections.deque()
        self._stopping = False
        self._stop_by_ns = 0
        self._thread: threading.Thread | None = None
        # shared with service threads (guarded by _cv)
        self._status: dict[str, bool] = dict.fromkeys(STATUS_BITS, False)
        self._recipe = 0
        self._status_dirty = True
        self._triggers: collections.deque[int] = collections.deque()
        self._recipe_req: int | None = None
        self._recipe_req_reported: int | None = None
        # writer-thread state
        self._heartbeat = 0
        self._next_hb = 0
        self._next_poll = 0
        self._overflow_until = 0
        self._last_trigger_seq: int | None = None
        self._trigger_count = 0  # triggers since the baseline read, the ones polled too late included
        self._last_trigger: tuple[int, int] | None = None  # (trigger_count, part_id) of the latest (under _cv)
        self._faults = LinkFaults(cfg=cfg, metrics=metrics, recorder=recorder, logger=log)
        self._conn = LinkConnection(cfg=cfg, transport=transport, regmap=self._map, book=self._book, metrics=metrics,
                                    clock_ns=clock_ns, fault=self._fault, logger=log, warn=self._warn)
        self._ledger = PartLedger(
            metrics=metrics, failsafe_verdict=cfg.failsafe_code, deadline_ns=self._book_deadline_ns, clock_ns=clock_ns
        )
        self._t_head_written_ns: int | None = None

    @classmethod
    def from_config(cls, cfg: PlcConfig, *, metrics_registry: CollectorRegistry | None = None) -> PlcLink:
        """Build client and metrics; ``metrics_registry=None`` uses a private registry (not exported)."""
        recorder = FlightRecorder(capacity=cfg.flight_recorder_size)
        metrics = PlcMetrics(registry=metrics_registry if metrics_registry is not None else CollectorRegistry())
        return cls(
            cfg=cfg, transport=ModbusTransport.from_config(cfg, recorder=recorder), recorder=recorder, metrics=metrics
        )

    # ---- service-facing API (any thread, never blocks on the network) ------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="plc-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the writer: parts still waiting for a verdict get the fail-safe, queued results are
        flushed for up to half of ``timeout_s``, then the PLC is told ``ready=0``. Results still
        buffered then go to the record sink as ``unsent`` / ``unacknowledged``, reported in one line."""
        with self._cv:
            self._stopping = True
            self._stop_by_ns = self._clock() + int(timeout_s * 500_000_000)
            self._cv.notify_all()
        if self._thread is not None:
            # the writer gives up flushing at _stop_by_ns; a transaction in flight ends by timeout_ms
            self._thread.join(timeout_s + 3 * self.cfg.timeout_ms / 1000)
            if self._thread.is_alive():
                log.error("PLC writer did not stop in time; buffered results are not recorded")
                self._t.close()
                return
            self._thread = None
        self._t.close()
        self._drain_at_stop()

    def set_record_sink(self, sink: RecordSink) -> None:
        """Where each part's record goes (the decision log); set before start()."""
        self._ledger.sink = sink

    @property
    def outcomes(self) -> dict[str, int]:
        """Parts by what the PLC got (PlcOutcome value); complete after stop()."""
        return self._ledger.outcomes

    @property
    def left_at_stop(self) -> dict[str, int]:
        """Results still buffered when the link stopped, by outcome (unsent / unacknowledged)."""
        return self._ledger.left_at_stop

    def expect(self, part_id: int, t_trigger_ns: int) -> None:
        """A part was triggered at ``t_trigger_ns`` (monotonic); its deadline starts now."""
        self._post("expect", part_id, t_trigger_ns)

    def submit(self, decision: Decision) -> None:
        """The verdict for ``decision.part_id``; timestamped here so writer lag cannot make it late."""
        self._post("submit", decision, self._clock())

    def set_status(
        self,
        *,
        ready: bool | None = None,
        fault: bool | None = None,
        degraded: bool | None = None,
        model_loaded: bool | None = None,
        camera_ok: bool | None = None,
    ) -> None:
        """Set the given status bits (None = leave as is); written to the PLC at once."""
        given = {
            "ready": ready,
            "fault": fault,
            "degraded": degraded,
            "model_loaded": model_loaded,
            "camera_ok": camera_ok,
        }
        bits = {name: value for name, value in given.items() if value is not None}
        with self._cv:
            self._status.update(bits)
            self._status_dirty = True
            self._cv.notify()

    def set_active_recipe(self, recipe: int) -> None:
        with self._cv:
            self._recipe = int(recipe)
            self._status_dirty = True
            self._cv.notify()

    def set_defect_classes(self, classes: list[str]) -> None:
        """Defect class codes follow the bundle's class list: code = index + 1 (0 = no defect)."""
        self._post("classes", {name: i + 1 for i, name in enumerate(classes)}, 0)

    def poll_recipe_request(self) -> int | None:
        """A recipe number the PLC asks for, once per change; None when nothing new."""
        with self._cv:
            req = self._recipe_req
            if not req or req == self._recipe_req_reported:
                return None
            self._recipe_req_reported = req
            return req

    def poll_trigger(self) -> int | None:
        """The oldest part id the PLC announced and nobody took yet, or None."""
        with self._cv:
            return self._triggers.popleft() if self._triggers else None

    def last_trigger(self) -> tuple[int, int] | None:
        """(n, part_id) of the latest trigger read: it was the n-th trigger (1-based) since the link's
        first read, counting the ones the PLC issued between two polls; None before the first.
        The service's part-id join (lineguard.partids) anchors camera frames on it."""
        with self._cv:
            return self._last_trigger

    def health(self) -> PlcHealth:
        with self._cv:
            inbox = len(self._inbox)
        return PlcHealth(
            waiting_records=self._book.waiting_records,
            t_last_progress_ns=self._ledger.t_progress_ns,
            fault_episodes=self._faults.episodes.count,
            connected=self._t.connected,
            t_lost_ns=self._conn.t_lost_ns,
            t_last_loss_ns=self._conn.t_last_loss_ns,
            reconnects=self._conn.reconnects,
            inbox=inbox,
            queued_results=self._book.queued,
            pending_deadlines=self._book.pending_deadlines,
            last_seq=self._book.last_seq,
        )

    @property
    def metrics(self) -> PlcMetrics:
        return self._m

    @property
    def recorder(self) -> FlightRecorder:
        return self._rec

    def _post(self, kind: str, payload: object, t_ns: int) -> None:
        with self._cv:
            if len(self._inbox) < self.cfg.inbox_capacity:
                self._inbox.append((kind, payload, t_ns))
                self._cv.notify()
                return
            # reject-newest: the part's deadline (if expected) still yields a counted fail-safe
            self._m.inbox_drops.inc()
        if isinstance(payload, Decision):  # its verdict never reaches the writer: logged now, once
            self._ledger.record_now(payload, PlcOutcome.UNSENT)

    # ---- writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        self._apply_nice()
        flushing = False
        while True:
            with self._cv:
                stopping = self._stopping
                items = list(self._inbox)
                self._inbox.clear()
            if stopping and not flushing:
                flushing = True
                self._conn.expedite()  # a link in backoff gets its retry now, inside the flush time
            now = self._clock()
            self._book.link_up = self._t.connected
            for kind, payload, t_ns in items:
                self._handle(kind, payload, t_ns, now)
            # on stop nobody will decide the pending parts any more: they get the fail-safe now
            self._on_events(self._book.expire(self._clock() if not stopping else 2**62))
            if not self._t.connected:
                self._drop_stale()
            self._flush_records()
            if stopping and (self._book.queued == 0 or self._clock() >= self._stop_by_ns):
                break
            if not self._t.connected:
                self._maybe_connect()
            if self._t.connected:
                self._service_bus()
                self._check_health()
            self._flush_records()
            self._m.unacked.set(self._book.queued)
            self._sleep_until_next()
        self._say_goodbye()

    def _drop_stale(self) -> None:
        """Link down: a result whose part deadline has passed is never written later as if fresh."""
        self._faults.on_stale(self._book.drop_stale(self._clock()))

    def _check_health(self) -> None:
        now = self._clock()
        t_written = self._t_head_written_ns
        if self._book.awaiting_ack and t_written is not None and now - t_written >= ACK_OVERDUE_NS:
            self._fault(f"PLC has not acknowledged result seq {self._book.last_seq} for "
                        f"{(now - t_written) / 1e9:.1f} s")
        elif self._book.queued == 0:
            self._faults.healthy(now)

    def _flush_records(self) -> None:
        self._ledger.flush(self._book.take_done())

    def _drain_at_stop(self) -> None:
        counts = self._book.drain()
        self._flush_records()
        self._m.unacked.set(0)
        self._faults.end(self._clock(), "link stopped")
        self._ledger.report_stop(counts)

    def _handle(self, kind: str, payload: object, t_ns: int, now: int) -> None:
        if kind == "expect":
            assert isinstance(payload, int)
            self._book.expect(payload, t_ns)
        elif kind == "submit":
            assert isinstance(payload, Decision)
            self._on_events(self._book.submit(payload, t_ns, now))
        elif kind == "classes":
            assert isinstance(payload, dict)
            self._book.set_class_codes(payload)

    def _on_events(self, events: list[Event]) -> None:
        if self._faults.on_events(events, self._clock()):  # overflow: status bits 6 + 1 for a while
            self._overflow_until = self._clock() + int(self.cfg.reconnected_flag_hold_ms * _MS)
            with self._cv:
                self._status_dirty = True

    def _service_bus(self) -> None:
        try:
            self._write_results()
            now = self._clock()
            with self._cv:
                dirty = self._status_dirty
            if dirty or now >= self._next_hb:
                self._guard(self._write_heartbeat)
            if self._t.connected and self._clock() >= self._next_poll:
                self._guard(self._poll)
                self._write_results()  # an ack may have freed the next result
        except PlcTransactionError as exc:  # only connection-breaking kinds get here
            self._conn.lost(exc)

    def _guard(self, fn: Callable[[], None]) -> None:
        """Run a non-result transaction; refusals are counted and retried next period."""
        try:
            fn()
        except PlcTransactionError as exc:
            if exc.kind.breaks_connection:
                raise
            self._m.errors.labels(kind=exc.kind.value).inc()
            self._fault(str(exc))

    def _write_results(self) -> None:
        while (res := self._book.to_write()) is not None:
            try:
                self._write_runs("result", self._map.result_runs(res))
            except PlcTransactionError as exc:
                if exc.kind.breaks_connection:
                    self._book.write_unanswered(res.seq)  # it may have landed: read back on reconnect
                    raise
                self._m.errors.labels(kind=exc.kind.value).inc()
                self._book.drop_head(res.seq)
                self._m.failsafe.labels(reason="plc_rejected").inc()
                self._faults.episodes.note("plc_rejected")
                self._fault(f"PLC refused result seq {res.seq} for part {res.part_id}: {exc}")
                continue
            self._mark_written(res)

    def _mark_written(self, res: PlcResult) -> None:
        self._book.mark_written(res.seq)
        self._t_head_written_ns = self._clock()
        self._m.results.labels(verdict=str(res.verdict)).inc()
        if self._book.awaiting_ack:
            self._next_poll = min(self._next_poll, self._clock() + int(self.cfg.ack_poll_period_ms * _MS))

    def _write_runs(self, op: str, runs: list[tuple[int, list[int]]]) -> None:
        for address, words in runs:
            t0 = self._clock()
            self._t.write_registers(address, words)
            self._m.write_latency.labels(op=op).observe((self._clock() - t0) / 1e9)

    def _write_heartbeat(self) -> None:
        now = self._clock()
        with self._cv:
            bits = dict(self._status)
            recipe = self._recipe
            self._status_dirty = False
        bits["link_recovered"] = now < self._conn.recovered_until_ns
        bits["result_overflow"] = now < self._overflow_until
        bits["fault"] = bits["fault"] or bits["result_overflow"]
        self._next_hb = now + int(self.cfg.heartbeat_period_ms * _MS)
        self._heartbeat = (self._heartbeat + 1) & 0xFFFF
        self._write_runs(
            "heartbeat", self._map.heartbeat_runs(heartbeat=self._heartbeat, status=status_word(bits), recipe=recipe)
        )
        coils = self.cfg.registers.status_coils_address
        if coils is not None:
            order = sorted(STATUS_BITS, key=STATUS_BITS.__getitem__)
            t0 = self._clock()
            self._t.write_coils(coils, [bits[name] for name in order])
            self._m.write_latency.labels(op="coils").observe((self._clock() - t0) / 1e9)

    def _poll(self) -> None:
        t0 = self._clock()
        words = self._t.read_registers(self._map.input_start, self._map.input_count)
        now = self._clock()
        self._m.write_latency.labels(op="poll").observe((now - t0) / 1e9)
        period = self.cfg.ack_poll_period_ms if self._book.awaiting_ack else self.cfg.poll_period_ms
        self._next_poll = now + int(period * _MS)
        inputs = self._map.decode_inputs(words)
        if self._book.ack(inputs.result_ack) and self._book.awaiting_ack is False:
            self._next_poll = now  # the next buffered result goes out without waiting a period
        self._take_trigger(inputs.trigger_seq, inputs.trigger_part_id, t0)
        with self._cv:
            self._recipe_req = inputs.recipe_request
            if inputs.recipe_request == 0:
                # the PLC cleared its request: the same recipe asked again later is a new request
                # (how a PLC retries after a refused changeover)
                self._recipe_req_reported = None

    def _take_trigger(self, seq: int, part_id: int, t_read_ns: int) -> None:
        last = self._last_trigger_seq
        self._last_trigger_seq = seq
        if last is None or seq == last:
            return  # first read is the baseline: an old trigger must not start a new part
        gap = (seq - last) % 0x10000
        if gap > 1:
            self._m.missed_triggers.inc(gap - 1)
        self._m.triggers.inc()
        if self.cfg.expect_on_trigger:
            self._book.expect(part_id, t_read_ns)
        with self._cv:
            self._trigger_count += gap
            self._last_trigger = (self._trigger_count, part_id)
            if len(self._triggers) >= TRIGGER_BACKLOG:
                self._triggers.popleft()
                self._m.missed_triggers.inc()
            self._triggers.append(part_id)

    # ---- connection management (state in plc/connection.py) ---------------------------------
    def _maybe_connect(self) -> None:
        if self._conn.maybe_connect():
            self._next_hb = 0  # status goes out at once, with link_recovered when it applies
            self._next_poll = 0
            if (res := self._book.in_doubt) is not None:
                self._read_back(res)

    def _read_back(self, res: PlcResult) -> None:
        """The result whose write got no answer before the loss: the PLC's result_seq says whether
        it landed. Written (or, in acknowledged mode, awaiting its ack), written again while within
        its deadline, or recorded as missed / in doubt past it; never counted missed while at the PLC."""
        addr, count = self._map.seq_field_words()
        plc_seq: int | None = None
        try:
            words = self._t.read_registers(addr, count)
        except PlcTransactionError as exc:
            if exc.kind.breaks_connection:
                self._conn.lost(exc)  # still in doubt: read back after the next reconnect
                return
            self._m.errors.labels(kind=exc.kind.value).inc()
            log.warning("cannot read result_seq back from the PLC (%s); the result in doubt stays in doubt", exc)
        else:
            plc_seq = self._map.decode_field(words, self.cfg.registers.result_seq, addr)
        outcome = self._book.resolve_doubt(plc_seq, self._clock())
        if outcome is PlcOutcome.WRITTEN:
            self._t_head_written_ns = self._clock()
            self._m.results.labels(verdict=str(res.verdict)).inc()
        elif outcome is not None:
            self._faults.on_stale({outcome: 1})
        self._warn("read_back", "result seq %d (part %d) got no answer before the link loss; read back from "
                   "the PLC: %s", res.seq, res.part_id,
                   outcome.value if outcome is not None else "not there, written again")

    def _warn(self, kind: str, msg: str, *args: object) -> None:
        """A warning that can repeat within a fault episode: throttled per kind (recorder.Throttle)."""
        self._faults.throttle.warning(self._clock(), kind, msg, *args)

    def _fault(self, reason: str) -> None:
        self._faults.fault(self._clock(), reason)

    def _sleep_until_next(self) -> None:
        wakes = [self._book.next_deadline_ns()]
        if self._t.connected:
            wakes += [self._next_hb, self._next_poll]
        else:
            wakes.append(self._conn.next_connect_ns)
        nxt = min(w for w in wakes if w is not None)
        with self._cv:
            if self._inbox or (self._status_dirty and self._t.connected):
                return
            if self._stopping:
                self._cv.wait(0.001)  # flushing: keep polling for acks
                return
            timeout = (nxt - self._clock()) / 1e9
            if timeout > 0:
                self._cv.wait(timeout)

    def _apply_nice(self) -> None:
        if self.cfg.writer_nice == 0:
            return
        try:
            # Linux: PRIO_PROCESS with a thread id sets that thread's nice value only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.cfg.writer_nice)
        except OSError as exc:
            log.warning("cannot set PLC writer nice %d (%s); running at default priority", self.cfg.writer_nice, exc)

    def _say_goodbye(self) -> None:
        if not self._t.connected:
            return
        with self._cv:
            self._status["ready"] = False
        try:
            self._write_heartbeat()
        except PlcTransactionError as exc:
            log.info("could not write ready=0 on stop: %s", exc)


__all__ = ["PlcErrorKind", "PlcHealth", "PlcLink", "PlcLinkLike"]
