"""Every Prometheus metric of the edge service and of the collection sink, declared once.

Data flow: each stage records into these objects where the event happens (source, engines,
decision, PLC writer, publisher, sink); Prometheus scrapes them through
:func:`start_metrics_server`. Label *names* and histogram buckets are fixed here; label values
are bounded sets (stages, verdicts, reasons, configured cameras and classes), never ids.

This module must never read the clock for latency itself nor do any other I/O than the HTTP
server it starts on request. PLC metrics (``lineguard_plc_*``) are declared by the PLC module,
not here. Latencies are stored in seconds (Prometheus base unit) with millisecond-scale buckets;
the ``observe_*`` helpers take milliseconds, the unit the pipeline measures in.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

# 0.25 ms .. 2.5 s: a line's cycle is typically 20-500 ms; fine steps where verdicts are decided.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)
# Raw anomaly scores depend on the bundle; callers with a known scale pass their own buckets.
DEFAULT_SCORE_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0,
)
SINK_WRITE_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
)

STAGES = ("acquire", "preprocess", "inference", "decision", "plc_write", "e2e")
VERDICTS = ("accept", "reject", "recheck", "failsafe")
# Known values are pre-created so dashboards show 0 instead of "no data".
PIPELINE_DROP_REASONS = ("queue_full", "corrupt_frame", "stale", "shutdown")
PUBLISHER_DROP_REASONS = ("queue_full", "hwm", "encode_error", "send_error", "closed", "near_reject_budget")
# unreadable_frame / incomplete_frame / missing_frame: parts the source delivered without a usable
# image (lineguard.sources.identity); queue_full / shutdown: parts the service could not judge in time.
FAILSAFE_REASONS = (
    "deadline", "corrupt_frame", "wrong_size", "engine_error", "no_bundle",
    "unreadable_frame", "incomplete_frame", "missing_frame", "queue_full", "shutdown",
)
MESSAGE_KINDS = ("uncertain", "audit", "unknown_defect", "near_reject")
SINK_REJECT_REASONS = (
    "bad_frame_count", "oversize", "bad_magic", "unsupported_version", "bad_json", "bad_header",
    "image_decode", "size_mismatch", "quota_full", "store_error", "internal",
)


DECISION_LOG_LOSS_REASONS = ("queue_full", "backlog_full", "shutdown", "closed")


class DecisionLogMetrics:
    """The decision log's metrics (``lineguard_decision_log_*``); part of :class:`EdgeMetrics`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.written_lines_total = Counter(
            "lineguard_decision_log_written_lines", "Decision-log lines written to the file", registry=r
        )
        self.lost_lines_total = Counter(
            "lineguard_decision_log_lost_lines", "Decision-log lines never written, by reason", ["reason"],
            registry=r,
        )
        self.fault_episodes_total = Counter(
            "lineguard_decision_log_fault_episodes",
            "Times the decision log became unwritable (disk full, read-only, I/O error)", registry=r,
        )
        self.fault = Gauge(
            "lineguard_decision_log_fault", "1 while the decision log cannot be written, else 0", registry=r
        )
        self.backlog_lines = Gauge(
            "lineguard_decision_log_backlog_lines", "Decision-log lines held in memory, waiting for the disk",
            registry=r,
        )
        for reason in DECISION_LOG_LOSS_REASONS:
            self.lost_lines_total.labels(reason=reason)


class EdgeMetrics:
    """The edge service's metrics in one registry (a fresh one per test)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        score_buckets: Iterable[float] = DEFAULT_SCORE_BUCKETS,
        camera_ids: Iterable[str] = (),
    ) -> None:
        r = registry
        self.registry = registry
        self.frames_total = Counter("lineguard_frames", "Frames taken from the source", registry=r)
        self.verdicts_total = Counter(
            "lineguard_verdicts", "Verdicts handed to the outputs", ["verdict", "defect_class"], registry=r
        )
        self.stage_latency = Histogram(
            "lineguard_stage_latency_seconds", "Latency of one pipeline stage per frame", ["stage"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.e2e_latency = Histogram(
            "lineguard_e2e_latency_seconds", "Frame available -> verdict handed to the PLC output",
            ["verdict"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.anomaly_score = Histogram(
            "lineguard_anomaly_score", "Raw anomaly score of judged frames",
            buckets=tuple(score_buckets), registry=r,
        )
        self.drops_total = Counter("lineguard_drops", "Frames dropped by the pipeline", ["reason"], registry=r)
        self.camera_reconnects_total = Counter(
            "lineguard_camera_reconnects", "Camera reopened after a loss", ["camera_id"], registry=r
        )
        self.camera_incomplete_frames_total = Counter(
            "lineguard_camera_incomplete_frames", "Incomplete or unusable camera buffers (each gets a fail-safe)",
            ["camera_id"], registry=r,
        )
        self.camera_gap_excess_total = Counter(
            "lineguard_camera_gap_excess",
            "Frame ids missing beyond source.max_gap_failsafes in one gap: counted, given no verdict",
            ["camera_id"], registry=r,
        )
        self.camera_frame_id_resets_total = Counter(
            "lineguard_camera_frame_id_resets",
            "Times the camera's frame-id counter went backwards without a reopen (restart): new baseline",
            ["camera_id"], registry=r,
        )
        self.publisher_drops_total = Counter(
            "lineguard_publisher_drops", "Frames the uncertain-frame publisher did not send", ["reason"],
            registry=r,
        )
        self.publisher_sent_total = Counter(
            "lineguard_publisher_sent", "Messages handed to ZeroMQ by the publisher", ["kind"], registry=r
        )
        self.publisher_queue_depth = Gauge(
            "lineguard_publisher_queue_depth", "Messages waiting for the publisher thread", registry=r
        )
        self.bundle_info = Info("lineguard_bundle", "Active model bundle", registry=r)
        self.execution_provider_info = Info(
            "lineguard_execution_provider", "Execution provider really running each engine", ["engine"],
            registry=r,
        )
        self.last_frame_timestamp = Gauge(
            "lineguard_last_frame_timestamp_seconds", "Unix time of the last frame (wall clock)", registry=r
        )
        self.last_frame_age = Gauge(
            "lineguard_last_frame_age_seconds",
            "Seconds since the last frame (monotonic), or since start when none came yet", registry=r,
        )
        self.failsafe_verdicts_total = Counter(
            "lineguard_failsafe_verdicts", "Fail-safe verdicts given instead of a judgement", ["reason"],
            registry=r,
        )
        self.decision_log = DecisionLogMetrics(r)
        self._last_frame_mono = time.monotonic()
        # The age is computed at scrape time so a stalled loop shows a growing age by itself.
        self.last_frame_age.set_function(lambda: time.monotonic() - self._last_frame_mono)
        self._precreate(camera_ids)

    def _precreate(self, camera_ids: Iterable[str]) -> None:
        # Children of the per-frame series, bound once: ``labels()`` costs a lock, a sort and a dict
        # lookup per call, several times per part on the inspection thread (issue 18, burst throughput).
        self._stage_children = {stage: self.stage_latency.labels(stage=stage) for stage in STAGES}
        self._e2e_children = {verdict: self.e2e_latency.labels(verdict=verdict) for verdict in VERDICTS}
        self._verdict_children: dict[tuple[str, str], Counter] = {}  # (verdict, defect_class), bounded sets
        for reason in PIPELINE_DROP_REASONS:
            self.drops_total.labels(reason=reason)
        for reason in PUBLISHER_DROP_REASONS:
            self.publisher_drops_total.labels(reason=reason)
        for kind in MESSAGE_KINDS:
            self.publisher_sent_total.labels(kind=kind)
        for reason in FAILSAFE_REASONS:
            self.failsafe_verdicts_total.labels(reason=reason)
        for cam in camera_ids:
            self.camera_reconnects_total.labels(camera_id=cam)
            self.camera_incomplete_frames_total.labels(camera_id=cam)
            self.camera_gap_excess_total.labels(camera_id=cam)
            self.camera_frame_id_resets_total.labels(camera_id=cam)

    # --- helpers the pipeline calls where the event happens -----------------------------------
    def frame_arrived(self) -> None:
        """Count one frame and reset the last-frame age (call on the acquisition thread)."""
        self.frames_total.inc()
        self._last_frame_mono = time.monotonic()
        self.last_frame_timestamp.set(time.time())

    def observe_stage_ms(self, stage: str, ms: float) -> None:
        """Record one stage latency in milliseconds; ``stage`` is one of :data:`STAGES`."""
        child = self._stage_children.get(stage)
        if child is None:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        child.observe(ms / 1000.0)

    def observe_verdict(self, *, verdict: str, defect_class: str, e2e_ms: float, score: float) -> None:
        """Record one verdict: count, end-to-end latency (also as stage 'e2e') and score."""
        key = (verdict, defect_class)
        counter = self._verdict_children.get(key)
        if counter is None:  # first verdict of this kind; a race only binds the same child twice
            counter = self._verdict_children[key] = self.verdicts_total.labels(verdict=verdict,
                                                                               defect_class=defect_class)
        counter.inc()
        e2e = self._e2e_children.get(verdict)
        (e2e if e2e is not None else self.e2e_latency.labels(verdict=verdict)).observe(e2e_ms / 1000.0)
        self._stage_children["e2e"].observe(e2e_ms / 1000.0)
        if math.isfinite(score):  # a fail-safe verdict may carry no score
            self.anomaly_score.observe(score)

    def set_bundle(self, *, bundle_id: str, product: str, recipe: str) -> None:
        """Replace the active-bundle labels (hot swap keeps one series)."""
        self.bundle_info.info({"bundle_id": bundle_id, "product": product, "recipe": recipe})

    def set_execution_provider(self, *, engine: str, provider: str) -> None:
        self.execution_provider_info.labels(engine=engine).info({"provider": provider})


class SinkMetrics:
    """The collection sink's metrics (``lineguard_sink_*``), in its own process and registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.received_total = Counter("lineguard_sink_received", "Messages received", registry=r)
        self.stored_total = Counter("lineguard_sink_stored", "Frames stored and indexed", ["kind"], registry=r)
        self.duplicates_total = Counter(
            "lineguard_sink_duplicates", "Messages ignored because their message_id is stored", registry=r
        )
        self.rejected_total = Counter(
            "lineguard_sink_rejected", "Messages refused (malformed, oversize, quota)", ["reason"], registry=r
        )
        self.evicted_total = Counter(
            "lineguard_sink_evicted", "Unlabelled frames deleted to stay under the quota", registry=r
        )
        self.store_bytes = Gauge("lineguard_sink_store_bytes", "Bytes of stored frame files", registry=r)
        self.store_frames = Gauge("lineguard_sink_store_frames", "Frames in the index", registry=r)
        self.write_latency = Histogram(
            "lineguard_sink_write_seconds", "Time to store and commit one batch of frames",
            buckets=SINK_WRITE_BUCKETS_S, registry=r,
        )
        self.recovered_orphans_total = Counter(
            "lineguard_sink_recovered_orphans", "Unindexed or temporary files removed at start", registry=r
        )
        self.quota_bytes = Gauge(
            "lineguard_sink_quota_bytes",
            "Effective quota: the configured one, lowered to stored + free - min_free_bytes on a small disk",
            registry=r,
        )
        self.disk_free_bytes = Gauge(
            "lineguard_sink_disk_free_bytes", "Free bytes on the store's disk, measured per batch", registry=r
        )
        self.store_fault = Gauge(
            "lineguard_sink_store_fault",
            "1 while the store refuses frames (store_error or quota_full), 0 once one is stored again", registry=r,
        )
        for reason in SINK_REJECT_REASONS:
            self.rejected_total.labels(reason=reason)
        for kind in MESSAGE_KINDS:
            self.stored_total.labels(kind=kind)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; :meth:`stop` shuts it down and frees the port."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout_s)


def start_metrics_server(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` in a daemon thread (port 0 = any free)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound_port = int(server.server_address[1])
    return MetricsServer(server=server, thread=thread, host=host, port=bound_port)
