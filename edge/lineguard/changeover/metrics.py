"""Prometheus metrics of the changeover subsystem (``lineguard_changeover_*``, ``lineguard_shadow_*``).

Declared once here with fixed label sets and explicit buckets; recorded where the event happens
(swap worker, shadow thread, rollback watch). Must never do I/O or read the clock itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# why a swap ended; pre-created so dashboards show 0 instead of "no data"
SWAP_RESULTS = ("ok", "already_active", "not_found", "signature", "verification", "golden", "engine", "internal")
SWAP_SOURCES = ("plc", "control", "drop", "rollback")
ROLLBACK_REASONS = ("reject_rate_high", "reject_rate_low", "latency")
SWAP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ChangeoverMetrics:
    """Swap outcomes and durations, rollbacks, shadow agreement; registered on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.swaps_total = Counter(
            "lineguard_changeover_swaps", "Swap requests by source and result", ["source", "result"], registry=r
        )
        self.swap_seconds = Histogram(
            "lineguard_changeover_swap_seconds", "Swap request received -> new bundle active (successful swaps)",
            ["prepared"], buckets=SWAP_BUCKETS_S, registry=r,
        )
        self.rollbacks_total = Counter(
            "lineguard_changeover_rollbacks", "Automatic returns to the previous bundle", ["reason"], registry=r
        )
        self.preloaded = Gauge(
            "lineguard_changeover_preloaded_bundles", "Bundles held prepared in memory", registry=r
        )
        self.shadow_frames_total = Counter(
            "lineguard_shadow_frames", "Frames judged by the shadow candidate", registry=r
        )
        self.shadow_drops_total = Counter(
            "lineguard_shadow_drops", "Frames the shadow candidate skipped (queue full: compute busy)", registry=r
        )
        self.shadow_agreement = Gauge(
            "lineguard_shadow_agreement_ratio", "Share of shadow-judged frames with the active bundle's verdict",
            registry=r,
        )
        for source in SWAP_SOURCES:
            for result in SWAP_RESULTS:
                self.swaps_total.labels(source=source, result=result)
        for reason in ROLLBACK_REASONS:
            self.rollbacks_total.labels(reason=reason)
        for prepared in ("preloaded", "cold"):
            self.swap_seconds.labels(prepared=prepared)
