"""Composition root and inspection loop of the edge service.

``InspectionService.from_config`` builds every collaborator from the config (the only place that
does); ``start()`` reads like a table of contents and ``stop()`` tears down in reverse.

Threads: acquisition (source -> bounded queue, named overflow policy, every drop counted and
answered with a fail-safe verdict; a part the source delivers without a usable image, a *fault
frame*, is answered with the fail-safe at once under its own part id) -> inspection (preprocess,
engines, decision) -> outputs (PLC link with its own writer thread and deadlines; publisher with
its own encoder thread; decision log; metrics). The main thread supervises: it feeds systemd's
watchdog only while both loops are alive, follows the PLC's recipe requests, and handles SIGTERM
(finish the part in flight, close the camera).

Must never: let a trigger go without a verdict, block the inspection loop on the sink or the disk,
or score one frame with two bundles.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from prometheus_client import REGISTRY, CollectorRegistry

from lineguard.bundle import Bundle
from lineguard.changeover.signing import SignatureVerifier, line_verifier, verify_bundle
from lineguard.changeover.swap import ChangeoverController
from lineguard.config import LineConfig
from lineguard.contracts import Decision, Frame
from lineguard.decision import decide, failsafe_decision, failsafe_reason
from lineguard.decisionlog import DecisionLog, NullDecisionLog
from lineguard.drift import DriftMonitor
from lineguard.errors import LineGuardError
from lineguard.metrics import EdgeMetrics, MetricsServer, start_metrics_server
from lineguard.partids import TriggerPartIds
from lineguard.plc import NullPlcLink, PlcConfig, PlcLink, PlcOutcome
from lineguard.prepared import PreparedBundle, build_runner, prepare_bundle, warm_up_and_self_test
from lineguard.publisher import Publisher, build_publisher
from lineguard.sources import PartIdFn, Source, SourceStatsSnapshot, build_source
from lineguard.systemd import Notifier

log = logging.getLogger(__name__)
ENGINE_STAGES = ("preprocess", "inference")  # runner timings exported as stage latency
FINISH_ACK_TIMEOUT_S = 5.0  # run --until-finished: how long the PLC may acknowledge nothing at the end


def build_plc_link(cfg: PlcConfig | None, *, registry: CollectorRegistry) -> PlcLink | NullPlcLink:
    """The configured PLC link, or a stand-in that writes nothing when ``plc:`` is absent."""
    return PlcLink.from_config(cfg, metrics_registry=registry) if cfg is not None else NullPlcLink()


def part_id_fn(cfg: LineConfig, plc: PlcLink | NullPlcLink) -> PartIdFn | None:
    """The source's part numbering: its own count (None), or the PLC's trigger part ids."""
    if cfg.service.part_ids != "plc_trigger":
        return None
    return TriggerPartIds(plc.last_trigger, wait_s=cfg.service.trigger_wait_ms / 1000)


@dataclass
class ServiceStats:
    """Counters the CLI summary and the tests read (metrics carry the same for Prometheus)."""

    frames: int = 0  # every part the source delivered, fault frames included
    decided: int = 0
    queue_drops: int = 0
    failsafe: int = 0
    by_verdict: dict[str, int] = field(default_factory=dict)
    source_faults: dict[str, int] = field(default_factory=dict)  # fault frames by reason (unreadable_frame...)
    e2e_ms: list[float] = field(default_factory=list)  # bounded ring, see _record
    first_decided_ns: int = 0  # monotonic time of the first / last decision (throughput)
    last_decided_ns: int = 0

    def failsafe_breakdown(self) -> str:
        """Why parts got a fail-safe at the source or the queue, for the run summaries."""
        parts = [f"queue full {self.queue_drops}"]
        parts += [f"{reason} {n}" for reason, n in sorted(self.source_faults.items())]
        return ", ".join(parts)

    @property
    def decisions_per_s(self) -> float:
        span_s = (self.last_decided_ns - self.first_decided_ns) / 1e9
        return (self.decided - 1) / span_s if self.decided > 1 and span_s > 0 else float("nan")


class InspectionService:
    """The running inspection service. Build it with :meth:`from_config`."""

    E2E_RING = 100_000

    def __init__(
        self,
        *,
        cfg: LineConfig,
        source: Source,
        active: PreparedBundle,
        plc: PlcLink | NullPlcLink,
        publisher: Publisher,
        metrics: EdgeMetrics,
        registry: CollectorRegistry,
        decision_log: DecisionLog | NullDecisionLog,
        drift: DriftMonitor,
        notifier: Notifier,
        verifier: SignatureVerifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self._active = active
        self.plc = plc
        self.publisher = publisher
        self.metrics = metrics
        self.registry = registry
        self.decision_log = decision_log
        self.drift = drift
        self.notifier = notifier
        self.stats = ServiceStats()
        self.metrics_server: MetricsServer | None = None
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=cfg.service.queue_size_frames)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._beat = {"acquisition": time.monotonic(), "inspection": time.monotonic()}
        self._source_snap: SourceStatsSnapshot | None = None
        self._record_lock = threading.Lock()  # _record runs on the acquisition and inspection threads
        self.changeover: ChangeoverController | None = None  # set by from_config when configured
        # the line's one signature policy: start, reload, swaps (from_config passes the one it verified with)
        self.verifier = verifier if verifier is not None else line_verifier(cfg)
        # the decision log gets each part once, from the PLC link, when it knows what the PLC got
        self.plc.set_record_sink(self._log_record)
        self._t_judged_ns: int | None = None  # when finished() first saw every frame judged

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: LineConfig, *, registry: CollectorRegistry | None = None) -> InspectionService:
        """Load and verify the bundle, build engines, source, PLC link, publisher and metrics."""
        # signature + every hash before anything else is built: a refused bundle never judges a part
        verifier = line_verifier(cfg)
        verified = verify_bundle(cfg.bundle.path, verifier)
        bundle = verified.bundle
        log.info("bundle %s: %s", bundle.bundle_id, verified.signature.describe())
        reg = registry if registry is not None else REGISTRY
        metrics = EdgeMetrics(reg, camera_ids=[cfg.source.camera_id])
        runner = build_runner(bundle, cfg)
        plc = build_plc_link(cfg.plc, registry=reg)
        publisher = build_publisher(cfg.publisher, metrics=metrics)
        source = build_source(cfg.source, part_id_fn=part_id_fn(cfg, plc))
        svc = cfg.service
        dlog: DecisionLog | NullDecisionLog = (
            DecisionLog(path=svc.decision_log_path, backlog_lines=svc.decision_log_backlog_lines,
                        retry_ms=svc.decision_log_retry_ms, metrics=metrics.decision_log)
            if svc.decision_log_path else NullDecisionLog()
        )
        service = cls(
            cfg=cfg,
            source=source,
            active=PreparedBundle.build(bundle, runner),
            plc=plc,
            publisher=publisher,
            metrics=metrics,
            registry=reg,
            decision_log=dlog,
            drift=DriftMonitor.from_bundle(bundle, reg, config=cfg.drift),
            notifier=Notifier(),
            verifier=verifier,
        )
        if cfg.changeover is not None:  # store, signatures, swap worker, control endpoint
            service.changeover = ChangeoverController.from_config(cfg.changeover, service=service, registry=reg)
        return service

    @property
    def bundle(self) -> Bundle:
        return self._active.bundle

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.verifier.warn_if_permissive(f"starting with bundle {self.bundle.bundle_id}")
        self._start_metrics()
        self._start_plc()
        self._warm_up_and_self_test()
        if self.changeover is not None:  # preloads mapped bundles before the first part arrives
            self.changeover.start()
        self.drift.start()
        self._open_source()
        # Start-up objects (config, engines, metrics) live for the whole run: freezing them keeps
        # full garbage collections (which hold the GIL) from re-scanning them during inspection.
        gc.collect()
        gc.freeze()
        self._start_threads()
        self.plc.set_status(ready=True, model_loaded=True, camera_ok=True, fault=False, degraded=False)
        self.notifier.ready(f"inspecting with bundle {self.bundle.bundle_id}")
        log.info("service ready: bundle %s, provider %s", self.bundle.bundle_id, self._active.runner.provider)

    def stop(self) -> None:
        """Reverse of start(): stop intake, finish the part in flight, flush outputs, close."""
        self.notifier.stopping()
        if self.changeover is not None:  # no swap may start while the loops wind down
            self.changeover.stop()
        self._stop.set()
        for t in reversed(self._threads):
            t.join(timeout=10)
        self._drain_queue_as_failsafe("shutdown")
        self.source.close()
        self.plc.set_status(ready=False)
        self.plc.stop()
        self.publisher.close()
        self.drift.stop()
        self.decision_log.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.notifier.close()
        log.info("service stopped: %d frames, %d decisions", self.stats.frames, self.stats.decided)

    def _start_metrics(self) -> None:
        m = self.cfg.metrics
        if m.enabled:
            self.metrics_server = start_metrics_server(self.registry, m.host, m.port)
            log.info("metrics on http://%s:%d/metrics", m.host, self.metrics_server.port)
        man = self.bundle.manifest
        self.metrics.set_bundle(bundle_id=man.bundle_id, product=man.product, recipe=str(man.recipe))

    def _start_plc(self) -> None:
        self.plc.start()
        self.plc.set_active_recipe(self.bundle.manifest.recipe)
        classifier = self.bundle.manifest.classifier
        self.plc.set_defect_classes(list(classifier.classes) if classifier else [])
        self.plc.set_status(ready=False, model_loaded=False)

    # ------------------------------------------------------------------ changeover
    def prepare_bundle(self, path: str | Path) -> PreparedBundle:
        """Verify, build, warm up and self-test a bundle off the hot path (the line keeps running).

        Raises :class:`SignatureError` / :class:`BundleError` (hashes) / :class:`EngineError` /
        :class:`SelfTestError` and leaves the running bundle untouched.
        """
        return prepare_bundle(path, cfg=self.cfg, verifier=self.verifier, active=self._active.bundle)

    def activate(self, prepared: PreparedBundle) -> PreparedBundle:
        """Switch to a prepared bundle between two parts; returns the previous one (for rollback).

        One reference assignment: the inspection thread reads it once per frame, so a frame is
        judged entirely by the old or entirely by the new bundle.
        """
        previous, self._active = self._active, prepared
        self.drift.rebind(prepared.bundle)
        man = prepared.bundle.manifest
        self.plc.set_active_recipe(man.recipe)
        self.plc.set_defect_classes(list(man.classifier.classes) if man.classifier else [])
        self.metrics.set_bundle(bundle_id=man.bundle_id, product=man.product, recipe=str(man.recipe))
        self.metrics.set_execution_provider(engine="anomaly", provider=prepared.runner.provider)
        log.info("bundle %s active (was %s)", man.bundle_id, previous.bundle.bundle_id)
        return previous

    def _warm_up_and_self_test(self) -> None:
        warm_up_and_self_test(self._active.runner, self.bundle)
        self.metrics.set_execution_provider(engine="anomaly", provider=self._active.runner.provider)

    def _open_source(self) -> None:
        # the baseline of the counter deltas: what the source counts from its first frame on is exported
        self._source_snap = self.source.stats.snapshot()
        self.source.open()

    def _start_threads(self) -> None:
        for name, target in (("acquisition", self._acquisition_loop), ("inspection", self._inspection_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ loops
    def _acquisition_loop(self) -> None:
        timeout_s = self.cfg.service.acquire_timeout_ms / 1000
        while not self._stop.is_set():
            self._beat["acquisition"] = time.monotonic()
            try:
                frame = self.source.read(timeout_s)
            except LineGuardError as exc:
                log.warning("source error: %s", exc)
                self.plc.set_status(camera_ok=False)
                time.sleep(0.05)
                continue
            if frame is None:
                if self.source.finished:
                    break
                continue
            self.stats.frames += 1
            self.metrics.frame_arrived()
            self.plc.expect(frame.part_id, frame.t_capture_ns)
            if frame.fault:
                self._answer_fault_frame(frame)
                continue
            if self.cfg.service.overflow_policy == "block":
                self._put_blocking(frame)
                continue
            try:
                self._queue.put_nowait(frame)
            except queue.Full:
                # policy "failsafe_newest": the frame cannot be judged in time -> fail-safe now,
                # not at the deadline, so the PLC knows as early as possible.
                self.stats.queue_drops += 1
                self.metrics.drops_total.labels(reason="queue_full").inc()
                self._emit(failsafe_decision(frame, self.bundle.bundle_id, "queue_full"), frame, None)
        self._answer_pending_at_stop()
        self._beat["acquisition"] = float("inf")  # a finished replay is not a wedged loop

    def _answer_pending_at_stop(self) -> None:
        """Parts the source already knows of (ids of a gap, a frame queued behind them) are parts
        too: at shutdown each gets its fail-safe instead of vanishing with the source."""
        for frame in self.source.take_pending():
            self.stats.frames += 1
            self.metrics.frame_arrived()
            self.plc.expect(frame.part_id, frame.t_capture_ns)
            if frame.fault:
                self._answer_fault_frame(frame)
            else:
                self._emit(failsafe_decision(frame, self.bundle.bundle_id, "shutdown"), frame, None)

    def _answer_fault_frame(self, frame: Frame) -> None:
        """A part without a usable image (unreadable, incomplete, missing id): fail-safe now,
        under its own part id, without taking a place in the inspection queue."""
        faults = self.stats.source_faults
        faults[frame.fault] = faults.get(frame.fault, 0) + 1
        detail = frame.fault_detail or frame.source_ref
        if frame.frame_id is not None:
            detail = f"frame id {frame.frame_id}: {detail}"
        self._emit(failsafe_decision(frame, self.bundle.bundle_id, frame.fault, detail), frame, None)

    def _put_blocking(self, frame: Frame) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                self._beat["acquisition"] = time.monotonic()  # waiting on purpose is not a stall
        self._emit(failsafe_decision(frame, self.bundle.bundle_id, "shutdown"), frame, None)

    def _inspection_loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            self._beat["inspection"] = time.monotonic()
            try:
                frame = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._inspect(frame)

    def _inspect(self, frame: Frame) -> None:
        active = self._active  # one reference per frame: never two bundles on one frame
        bundle_id = active.bundle.bundle_id
        try:
            out = active.runner.infer(frame.image)
            t0 = time.perf_counter_ns()
            decision = decide(out, frame, active.policy, t_decided_ns=time.monotonic_ns())
            decide_ms = (time.perf_counter_ns() - t0) / 1e6
        except LineGuardError as exc:
            log.warning("part %d cannot be judged: %s", frame.part_id, exc)
            self._emit(failsafe_decision(frame, bundle_id, failsafe_reason(exc), str(exc)), frame, None)
            return
        except Exception as exc:  # a bug must cost one part a fail-safe verdict, not the loop
            log.exception("part %d: unexpected error while judging", frame.part_id)
            self._emit(failsafe_decision(frame, bundle_id, "internal_error", repr(exc)), frame, None)
            return
        for stage in ENGINE_STAGES:
            if stage in out.timings_ms:
                self.metrics.observe_stage_ms(stage, out.timings_ms[stage])
        self.metrics.observe_stage_ms("decision", decide_ms)
        self._emit(decision, frame, out.anomaly_map)
        self.drift.observe(frame.image, decision)

    def _emit(self, d: Decision, frame: Frame, anomaly_map: npt.NDArray[np.float32] | None) -> None:
        self.plc.submit(d)
        if not d.failsafe:  # the publisher picks uncertain frames and the audit sample itself
            self.publisher.offer(d, frame, anomaly_map, thresholds=self._active.thresholds)
        self._record(d)
        # O(1) hand-off: rollback watch and shadow candidate; a picture the camera or a file never
        # delivered says nothing about the bundle, so it must not count toward a rollback
        if self.changeover is not None and not frame.fault:
            self.changeover.observe(d, frame)

    def _log_record(self, d: Decision, plc: PlcOutcome) -> None:
        """Record sink of the PLC link: one decision-log line per part, saying what the PLC got."""
        self.decision_log.write(d, {"plc": plc.value})

    def _record(self, d: Decision) -> None:
        with self._record_lock:
            self._record_locked(d)

    def _record_locked(self, d: Decision) -> None:
        s = self.stats
        s.decided += 1
        s.last_decided_ns = d.t_decided_ns
        if s.decided == 1:
            s.first_decided_ns = d.t_decided_ns
        s.failsafe += int(d.failsafe)
        s.by_verdict[d.verdict.label] = s.by_verdict.get(d.verdict.label, 0) + 1
        if len(s.e2e_ms) >= self.E2E_RING:
            del s.e2e_ms[: self.E2E_RING // 2]
        s.e2e_ms.append(d.latency_ms)
        self.metrics.observe_verdict(
            verdict=d.verdict.label, defect_class=d.defect_class, e2e_ms=d.latency_ms, score=d.anomaly_score
        )
        if d.failsafe:
            self.metrics.failsafe_verdicts_total.labels(reason=d.reasons[0] if d.reasons else "unknown").inc()

    def _drain_queue_as_failsafe(self, reason: str) -> None:
        while True:
            try:
                frame = self._queue.get_nowait()
            except queue.Empty:
                return
            self._emit(failsafe_decision(frame, self.bundle.bundle_id, reason), frame, None)

    def queue_depth(self) -> tuple[int, int]:
        """(frames waiting for inspection, queue capacity)."""
        return self._queue.qsize(), self._queue.maxsize

    # ------------------------------------------------------------------ supervision
    def alive(self) -> bool:
        """Both loops made progress within the configured stall budget."""
        budget = self.cfg.service.stall_budget_ms / 1000
        now = time.monotonic()
        return all(now - beat < budget for beat in self._beat.values())

    def finished(self, ack_timeout_s: float = FINISH_ACK_TIMEOUT_S) -> bool:
        """True when the source is exhausted, every frame is judged, and then either the PLC holds
        (has acknowledged) every result or no result reached it for ``ack_timeout_s``; ``stop()``
        then logs what is left as ``unsent`` / ``unacknowledged``."""
        judged = not self._threads[0].is_alive() and self._queue.empty() and self.stats.decided >= self.stats.frames
        if not judged:
            return False
        now = time.monotonic_ns()
        if self._t_judged_ns is None:
            self._t_judged_ns = now
        if not isinstance(self.plc, PlcLink):
            return True
        h = self.plc.health()
        if h.inbox + h.queued_results == 0:
            return True
        return now - max(self._t_judged_ns, h.t_last_progress_ns) >= ack_timeout_s * 1e9

    def _export_source_stats(self) -> None:
        """Camera counters -> metrics and the PLC's camera_ok bit (main thread, once per tick)."""
        snap = self.source.stats.snapshot()
        if self._source_snap is not None:
            delta = snap.counts_since(self._source_snap)
            cam = self.source.camera_id
            self.metrics.camera_reconnects_total.labels(camera_id=cam).inc(delta["reconnects"])
            self.metrics.camera_incomplete_frames_total.labels(camera_id=cam).inc(delta["incomplete"])
            self.metrics.drops_total.labels(reason="camera").inc(delta["dropped"])
            self.metrics.drops_total.labels(reason="corrupt_frame").inc(delta["unreadable"])
            self.metrics.camera_gap_excess_total.labels(camera_id=cam).inc(delta["gap_excess"])
            self.metrics.camera_frame_id_resets_total.labels(camera_id=cam).inc(delta["id_resets"])
        self._source_snap = snap
        self.plc.set_status(camera_ok=snap.connected)

    def supervise_once(self) -> None:
        """One tick of the main thread: watchdog, camera counters, status bits."""
        self._export_source_stats()
        if self.changeover is not None:
            self.changeover.tick()  # the PLC's recipe request -> swap worker
        if self.alive():
            self.notifier.watchdog()
        else:
            log.error("inspection stalled: %s", {k: round(time.monotonic() - v, 2) for k, v in self._beat.items()})
            self.plc.set_status(fault=True)

    def run_forever(
        self, stop: threading.Event, *, until_finished: bool = False, ack_timeout_s: float = FINISH_ACK_TIMEOUT_S
    ) -> None:
        period = Notifier.watchdog_interval_s() or 0.5
        while not stop.wait(min(period, 0.5 if not until_finished else 0.1)):
            self.supervise_once()
            if until_finished and self.finished(ack_timeout_s):
                break

