"""Part ledger of the PLC link: where each part's record goes once the link is done with it.

Data flow: ``ResultBook.take_done()`` (writer thread) -> ``PartLedger.flush`` -> counted by what
the PLC got (``lineguard_plc_part_outcomes_total``, ``outcomes``) -> the record sink (the
service's decision log). A part that never got a verdict is logged with a fail-safe decision.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from lineguard.contracts import Decision, Verdict
from lineguard.plc.api import RecordSink
from lineguard.plc.book import PartRecord, PlcOutcome
from lineguard.plc.metrics import PlcMetrics

log = logging.getLogger("lineguard.plc.link")
DELIVERED = (PlcOutcome.WRITTEN, PlcOutcome.FAILSAFE_DEADLINE)  # the PLC holds a result for the part
EARLY_REMEMBERED = 8192  # parts logged by record_now() whose later record is suppressed


class PartLedger:
    """Counts every part's outcome and hands its record to the sink, exactly once per part."""

    def __init__(
        self, *, metrics: PlcMetrics, failsafe_verdict: Verdict, deadline_ns: int, clock_ns: Callable[[], int]
    ) -> None:
        self._m = metrics
        self._failsafe = failsafe_verdict
        self._deadline_ns = deadline_ns
        self._clock = clock_ns
        self.sink: RecordSink | None = None
        self.outcomes: dict[str, int] = {}  # PlcOutcome value -> parts
        self.left_at_stop: dict[str, int] = {}  # results still buffered when the link stopped
        self.t_progress_ns = clock_ns()  # a result last reached the PLC (acknowledged / written)
        self._lock = threading.Lock()  # record_now() runs on service threads
        self._early: collections.OrderedDict[int, None] = collections.OrderedDict()  # logged by record_now

    def flush(self, records: list[PartRecord]) -> None:
        for rec in records:
            with self._lock:
                logged = rec.part_id in self._early
                if logged:  # already logged when its verdict could not be handed to the writer
                    del self._early[rec.part_id]
            if logged:
                continue
            if rec.plc in DELIVERED:
                self.t_progress_ns = self._clock()
            self._emit(rec.decision or self._no_verdict(rec), rec.plc)

    def record_now(self, decision: Decision, plc: PlcOutcome) -> None:
        """Any thread: log a part whose verdict never reached the writer (inbox full); a record the
        writer makes for it later (its deadline fail-safe) is then not logged a second time."""
        with self._lock:
            self._early[decision.part_id] = None
            if len(self._early) > EARLY_REMEMBERED:
                self._early.popitem(last=False)
        self._emit(decision, plc)

    def _emit(self, decision: Decision, plc: PlcOutcome) -> None:
        with self._lock:
            self.outcomes[plc.value] = self.outcomes.get(plc.value, 0) + 1
        self._m.part_outcomes.labels(plc=plc.value).inc()
        sink = self.sink
        if sink is None:
            return
        try:
            sink(decision, plc)
        except Exception:  # a broken sink must not stop the writer: the PLC comes first
            log.exception("record sink failed for part %d", decision.part_id)

    def _no_verdict(self, rec: PartRecord) -> Decision:
        """The decision-log entry of a part that got a deadline fail-safe and no verdict at all."""
        return Decision(
            seq=0, part_id=rec.part_id, verdict=self._failsafe, anomaly_score=float("nan"), bundle_id="",
            camera_id="", t_capture_ns=rec.t_deadline_ns - self._deadline_ns, t_decided_ns=rec.t_deadline_ns,
            reasons=("deadline", "no verdict arrived"), failsafe=True,
        )

    def report_stop(self, counts: dict[PlcOutcome, int]) -> None:
        """One line for everything still buffered when the link stopped (already in the records)."""
        self.left_at_stop = {k.value: v for k, v in counts.items()}
        if counts:
            detail = ", ".join(f"{k} {v}" for k, v in self.left_at_stop.items())
            log.warning(
                "PLC link stopped with %d result(s) the PLC never acknowledged (%s); each is in the decision "
                "log with that plc outcome", sum(counts.values()), detail
            )
