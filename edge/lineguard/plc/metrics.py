"""Prometheus metrics of the PLC link, declared once with fixed labels and explicit buckets.

Built against a registry passed in, so tests use a fresh ``CollectorRegistry`` and the
composition root passes the global one. Recording happens where the event happens (writer
thread); nothing here does I/O.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lineguard.plc.errors import PlcErrorKind

# 0.25 ms .. 1 s: loopback writes take well under 1 ms, a PLC on a busy LAN a few ms.
LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
FAILSAFE_REASONS = ("deadline", "overflow", "plc_rejected", "missed_deadline")
# what the PLC got per part: the decision log's ``plc`` field (lineguard.plc.book.PlcOutcome)
PART_OUTCOMES = (
    "written", "failsafe_deadline", "missed_deadline", "overflow", "plc_rejected", "unacknowledged", "unsent",
    "in_doubt",
)


class PlcMetrics:
    """All PLC link metrics; label values are pre-created so dashboards see zeros, not gaps."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        self.write_latency = Histogram(
            "lineguard_plc_transaction_seconds",
            "Modbus transaction latency as seen by LineGuard",
            ["op"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.errors = Counter(
            "lineguard_plc_errors_total", "PLC transaction errors by kind", ["kind"], registry=registry
        )
        self.reconnects = Counter("lineguard_plc_reconnects_total", "PLC connections re-established", registry=registry)
        self.connected = Gauge("lineguard_plc_connected", "1 while the PLC link is connected", registry=registry)
        self.unacked = Gauge(
            "lineguard_plc_unacked_results", "results queued or waiting for the PLC ack", registry=registry
        )
        self.failsafe = Counter(
            "lineguard_plc_failsafe_verdicts_total",
            "parts whose real verdict did not reach the PLC",
            ["reason"],
            registry=registry,
        )
        self.results = Counter(
            "lineguard_plc_results_written_total", "result blocks written", ["verdict"], registry=registry
        )
        self.late = Counter(
            "lineguard_plc_late_verdicts_total",
            "real verdicts that arrived after the fail-safe was chosen (never written)",
            registry=registry,
        )
        self.duplicates = Counter(
            "lineguard_plc_duplicate_verdicts_total",
            "second verdicts for an already answered part (ignored)",
            registry=registry,
        )
        self.overflows = Counter("lineguard_plc_buffer_overflows_total", "result buffer overflows", registry=registry)
        self.triggers = Counter("lineguard_plc_triggers_total", "triggers read from the PLC", registry=registry)
        self.inbox_drops = Counter(
            "lineguard_plc_inbox_drops_total",
            "expect/submit calls dropped because the writer inbox was full",
            registry=registry,
        )
        self.missed_triggers = Counter(
            "lineguard_plc_missed_triggers_total",
            "triggers the PLC issued faster than LineGuard polled",
            registry=registry,
        )
        self.fault_episodes = Counter(
            "lineguard_plc_fault_episodes_total",
            "PLC fault episodes (first fault until the link is healthy again); one flight-recorder dump each",
            registry=registry,
        )
        self.part_outcomes = Counter(
            "lineguard_plc_part_outcomes_total",
            "parts the link is done with, by what the PLC got (the decision log's plc field)",
            ["plc"],
            registry=registry,
        )
        for outcome in PART_OUTCOMES:
            self.part_outcomes.labels(plc=outcome)
        for op in ("result", "heartbeat", "poll", "coils"):
            self.write_latency.labels(op=op)
        for kind in PlcErrorKind:
            self.errors.labels(kind=kind.value)
        for reason in FAILSAFE_REASONS:
            self.failsafe.labels(reason=reason)
