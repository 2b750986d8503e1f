"""Fault bookkeeping of the PLC link's writer thread: what the result book reports per part
(deadline fail-safe, overflow, missed deadline, late or duplicate verdict) becomes metrics,
throttled warnings and the current fault episode (one flight-recorder dump per episode).

Writer thread only; no I/O besides logging.
"""

from __future__ import annotations

import logging

from lineguard.plc.book import Event, Outcome, PlcOutcome
from lineguard.plc.config import PlcConfig
from lineguard.plc.metrics import PlcMetrics
from lineguard.plc.recorder import FaultEpisodes, FlightRecorder, Throttle

EPISODE_QUIET_NS = 1_000_000_000  # healthy this long with no new fault ends a fault episode


class LinkFaults:
    """Per-part events -> metrics, bounded log lines and fault episodes."""

    def __init__(self, *, cfg: PlcConfig, metrics: PlcMetrics, recorder: FlightRecorder, logger: logging.Logger):
        self._cfg = cfg
        self._m = metrics
        self.episodes = FaultEpisodes(recorder=recorder, logger=logger, quiet_ns=EPISODE_QUIET_NS)
        self.throttle = Throttle(logger)

    def fault(self, now_ns: int, reason: str) -> None:
        # one dump per fault episode: a PLC that stays away or never acknowledges must not flood the log
        if self.episodes.fault(now_ns, reason):
            self._m.fault_episodes.inc()

    def healthy(self, now_ns: int) -> None:
        if self.episodes.healthy(now_ns):
            self.throttle.flush()

    def end(self, now_ns: int, why: str) -> None:
        self.episodes.end(now_ns, why)
        self.throttle.flush()

    def on_stale(self, counts: dict[PlcOutcome, int]) -> None:
        """Results dropped because the link was down past their deadline (never written late)."""
        for outcome, n in counts.items():
            if outcome is PlcOutcome.MISSED_DEADLINE:
                self._m.failsafe.labels(reason="missed_deadline").inc(n)
            self.episodes.note(outcome.value, n)

    def on_events(self, events: list[Event], now_ns: int) -> bool:
        """Count and log the book's events; True when the result buffer overflowed."""
        overflow = False
        for ev in events:
            if ev.outcome is Outcome.FAILSAFE_QUEUED:
                self._m.failsafe.labels(reason="deadline").inc()
                self.episodes.note("deadline_failsafe")
                self.throttle.warning(
                    now_ns, "deadline", "part %d: no verdict within %.0f ms; fail-safe %s queued (seq %d)",
                    ev.part_id, self._cfg.deadline_ms, self._cfg.failsafe_verdict, ev.seq,
                )
            elif ev.outcome is Outcome.OVERFLOW:
                overflow = True
                self._m.failsafe.labels(reason="overflow").inc()
                self._m.overflows.inc()
                size = self._cfg.result_buffer_size
                self.fault(now_ns, f"result buffer overflow ({size} unacked), part {ev.part_id}")
                self.episodes.note("overflow")
                self.throttle.warning(now_ns, "overflow", "part %d: result buffer full; nothing written", ev.part_id)
            elif ev.outcome is Outcome.MISSED_DEADLINE:
                self._m.failsafe.labels(reason="missed_deadline").inc()
                self.episodes.note("missed_deadline")
            elif ev.outcome is Outcome.LATE:
                self._m.late.inc()
                self.throttle.warning(
                    now_ns, "late", "part %d: verdict arrived after the fail-safe was chosen; not written", ev.part_id
                )
            elif ev.outcome is Outcome.DUPLICATE:
                self._m.duplicates.inc()
                self.throttle.warning(now_ns, "duplicate", "part %d: second verdict ignored", ev.part_id)
        return overflow
